"""research.stream_probe: the trunk spec's errors and the linear probe itself."""

from __future__ import annotations

import argparse

import pytest
import torch

from research.stream_probe import features, fit_probe, parse_trunk, probe_accuracy


def test_a_trunk_spec_names_its_streams_and_a_bad_one_says_what_is_expected():
    name, spec = parse_trunk("pre+warm:ir50=a.safetensors,warmup=150")
    assert name == "pre+warm" and spec == {"ir50": "a.safetensors", "mobilefacenet": "",
                                           "warmup": "150", "seed": "0"}
    assert parse_trunk("random:")[1]["ir50"] == ""
    with pytest.raises(argparse.ArgumentTypeError, match="keys ir50, mobilefacenet"):
        parse_trunk("x:ir=a")
    with pytest.raises(argparse.ArgumentTypeError, match="needs a NAME"):
        parse_trunk(":warmup=3")


def test_the_probe_reads_a_class_that_only_the_map_layout_carries():
    """Two classes that differ only in *where* a channel is active: the pooled features are
    the same for both (chance), the flattened map separates them."""
    g = torch.Generator().manual_seed(0)
    n = 200
    y = torch.arange(n) % 2
    i3 = torch.randn(n, 4, 7, 7, generator=g) * 0.1
    i3[y == 0, 0, 1, 1] += 3.0
    i3[y == 1, 0, 5, 5] += 3.0
    maps = [None, None, i3, None, None, i3]
    for kind, expect_high in (("pooled", False), ("map", True)):
        x = features(maps, "image", kind)
        layer, mean, std = fit_probe(x[:100], y[:100], 2)
        acc = probe_accuracy(layer, mean, std, x[100:], y[100:])
        assert (acc > 0.95) if expect_high else (acc < 0.75), (kind, acc)
    constant = torch.ones(10, 3)  # a constant feature: the guarded std keeps it finite
    layer, mean, std = fit_probe(constant, torch.arange(10) % 2, 2)
    assert torch.isfinite(layer.weight).all()
