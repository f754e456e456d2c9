"""The efficiency benchmark's measurements (structure and exact byte counts; no timing asserted)."""

import torch

from csa_lightning.benchmark import benchmark, saved_tensor_bytes, to_markdown


def test_saved_tensor_bytes_counts_distinct_storages_exactly():
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16, requires_grad=True)
    # mm saves its input (4 x 16 floats) and the weight (8 x 16 floats); nothing else
    assert saved_tensor_bytes(layer, x) == (4 * 16 + 8 * 16) * 4

    def twice(t):  # the same storage saved twice is counted once
        return layer(t) + layer(t)

    assert saved_tensor_bytes(twice, x) == (4 * 16 + 8 * 16) * 4


def test_benchmark_rows_ratios_and_the_cost_of_contiguity_grad():
    rows = benchmark(depth=18, attentions=["none", "csa"], batch=2, size=32, repeats=1, csa_modes=["l2"], csa_grad=True)
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["none", "csa (l2)", "csa (l2, contiguity_grad)"]
    assert by_name["none"]["train_ratio"] == 1.0 and by_name["none"]["saved_ratio"] == 1.0
    assert by_name["csa (l2)"]["params"] == 11_734_052
    # differentiating through w keeps the C x C chain for backward; the default path does not
    assert by_name["csa (l2, contiguity_grad)"]["saved_mb"] > by_name["csa (l2)"]["saved_mb"]
    assert all(r["train_s"] > 0 and r["infer_s"] > 0 for r in rows)
    assert "| csa (l2) | 11,734,052 |" in to_markdown(rows, "t")
