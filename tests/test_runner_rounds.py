"""run_rounds.settings_of: each method's Settings filled from a RunConfig by name (and RENAMED) equals
the hand-written mapping it replaced, field for field."""

from __future__ import annotations

import pytest

from pure_prune.algorithms import distill, dst, imp, rsst
from pure_prune.app import run_rounds
from pure_prune.app.runconfig import RunConfig

CONFIGS = [
    RunConfig(),
    RunConfig(method="rsst", pruning_times=3, criteria="l2", rst_schedule="exp", reg_granularity=0.5),
    RunConfig(
        method="distill", rate=0.4, epochs=7, finetune_epochs=3, alpha=0.25, temperature=2.0, scope="layer"
    ),
    RunConfig(method="dst", dst="set", sparsity=0.7, update_every=5, drop_fraction=0.1, end_fraction=0.5),
    RunConfig(method="imp", rewind_epoch=2, epochs=4, control="reinit", schedule="progressive"),
]


def _old_imp(cfg: RunConfig, spe: int) -> imp.Settings:
    return imp.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        rewind_epoch=cfg.rewind_epoch,
        steps_per_epoch=spe,
        schedule=cfg.schedule,
        scope=cfg.scope,
        struct=cfg.struct,
        control=cfg.control,
    ).check()


def _old_rsst(cfg: RunConfig) -> rsst.Settings:
    return rsst.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        finetune_epochs=cfg.finetune_epochs,
        criterion=cfg.criteria,
        growth=cfg.rst_schedule,
        granularity=cfg.reg_granularity,
        exponent=cfg.exponent,
        scope=cfg.scope,
        schedule=cfg.schedule,
    )


def _old_distill(cfg: RunConfig) -> distill.Settings:
    return distill.Settings(
        rate=cfg.rate,
        rounds=cfg.pruning_times,
        epochs=cfg.epochs,
        finetune_epochs=cfg.finetune_epochs,
        alpha=cfg.alpha,
        T=cfg.temperature,
        schedule=cfg.schedule,
        scope=cfg.scope,
        struct=cfg.struct,
    )


def _old_dst(cfg: RunConfig, spe: int) -> dst.Settings:
    return dst.Settings(
        kind=cfg.dst,
        sparsity=cfg.sparsity,
        epochs=cfg.epochs,
        steps_per_epoch=spe,
        update_every=cfg.update_every,
        drop_fraction=cfg.drop_fraction,
        end_fraction=cfg.end_fraction,
        distribution=cfg.distribution,
        scope=cfg.scope,
    )


@pytest.mark.parametrize("cfg", [c.resolved() for c in CONFIGS])
def test_settings_builders_equal_the_hand_written_mapping(cfg):
    for spe in (1, 13):
        if cfg.struct != "nm":
            assert run_rounds.imp_settings(cfg, spe) == _old_imp(cfg, spe)
        assert run_rounds.dst_settings(cfg, spe) == _old_dst(cfg, spe)
    assert run_rounds.rsst_settings(cfg) == _old_rsst(cfg)
    assert run_rounds.distill_settings(cfg) == _old_distill(cfg)


def test_settings_of_fills_every_field_and_names_a_missing_one():
    cfg = RunConfig(temperature=5.0, dst="ste").resolved()
    assert run_rounds.settings_of(distill.Settings, cfg).T == 5.0
    assert run_rounds.settings_of(dst.Settings, cfg, steps_per_epoch=4).kind == "ste"
    with pytest.raises(TypeError, match="steps_per_epoch"):
        run_rounds.settings_of(dst.Settings, cfg)
    assert set(run_rounds.RENAMED.values()) <= set(RunConfig.__dataclass_fields__)
