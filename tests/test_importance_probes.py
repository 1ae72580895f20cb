"""Hutchinson's Rademacher probes from the byte table of signs equal the shift-unpacked ones, bit
for bit (the route a big-endian machine takes)."""

from __future__ import annotations

import sys

import pytest
import torch

from pure_prune import tree
from pure_prune.importance import hessian as H


@pytest.mark.parametrize("width", [(3, 5), (4, 8)])  # 15 + 3 and 32 + 4 entries: partial and whole words
def test_hutchinson_probes_from_the_byte_table_equal_the_shifted_bits(monkeypatch, width):
    params = {"b": torch.zeros(width[0]), "w": torch.zeros(width)}

    def loss(p, batch):  # rows of w couple all their entries: the estimate depends on every sign
        return 0.5 * ((p["w"].sum(1) * batch[0]).square().sum() + (p["b"] * batch[0]).square().sum())

    def probes(order):
        monkeypatch.setattr(sys, "byteorder", order)
        return H.hessian_diag(loss, params, (torch.ones(1),), method="hutchinson", probes=5, key=11)

    little, big = probes("little"), probes("big")
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(little), tree.leaves(big)))
