"""The efficiency benchmark's measurements (structure and exact byte counts; no timing asserted)."""

import pytest
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
    rows = benchmark(depth=18, attentions=["none", "csa"], batch=2, size=32, repeats=1, csa_modes=["l2"], csa_grad=True,
                     max_repeats=2)  # fmt: skip
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["none", "csa (l2)", "csa (l2, contiguity_grad)"]
    assert by_name["none"]["train_ratio"] == 1.0 and by_name["none"]["saved_ratio"] == 1.0
    assert by_name["csa (l2)"]["params"] == 11_734_052
    # differentiating through w keeps the C x C chain for backward; the default path does not
    assert by_name["csa (l2, contiguity_grad)"]["saved_mb"] > by_name["csa (l2)"]["saved_mb"]
    assert all(r["train_s"] > 0 and r["infer_s"] > 0 for r in rows)
    assert "| csa (l2) | 11,734,052 |" in to_markdown(rows, "t")
    # every ratio comes with its range over the rounds; more rounds only while one is unstable, at most max_repeats
    assert all(1 <= r["rounds"] <= 2 and len(r["train_ratio_range"]) == 2 for r in rows)
    csa = by_name["csa (l2)"]
    assert csa["train_ratio_range"][0] <= csa["train_ratio"] <= csa["train_ratio_range"][1]


def test_projection_agreement_rows_per_gate_and_image():
    from csa_lightning.benchmark import projection_agreement
    from csa_lightning.models import attention_resnet

    torch.manual_seed(0)
    model = attention_resnet(18, "csa")
    images = [torch.randn(1, 3, 96, 128), torch.randn(1, 3, 64, 64)]
    rows = projection_agreement(model, images, projection_dim=16, repeats=1)
    assert len(rows) == 2 * 4  # 2 images x 4 stage-end gates
    first = [r for r in rows if r["image"] == 0]
    assert [r["map"] for r in first] == ["24x32", "12x16", "6x8", "3x4"]
    assert [r["projected"] for r in first] == [True, True, True, False]  # 3 x 4 = 12 <= k = 16
    for r in rows:
        assert -1 <= r["rho_q"] <= 1 and -1 <= r["rho_p"] <= 1 and r["exact_s"] > 0 and r["projected_s"] > 0
    # where nothing is projected the two computations are the same: rank correlation 1
    assert all(r["rho_q"] == pytest.approx(1.0) for r in rows if not r["projected"])
    # hooks removed: the model runs clean afterwards
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_spearman_matches_the_definition():
    from csa_lightning.benchmark import _spearman

    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert _spearman(a, a * 10) == pytest.approx(1.0)
    assert _spearman(a, -a) == pytest.approx(-1.0)
    assert _spearman(a, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--attentions", "none,sse"], "unknown attention 'sse' (did you mean 'se'?)"),
        (["--batch", "0"], "must be a positive integer"),
        (["--repeats", "-1"], "must be a positive integer"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    from csa_lightning.benchmark import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_channels_last_and_bf16_options_run():
    rows = benchmark(depth=18, attentions=["none", "csa"], batch=2, size=32, repeats=1, bf16=True, channels_last=True)
    assert [r["variant"] for r in rows] == ["none", "csa (l2)"]
    assert rows[0]["peak_ratio"] is None  # peak memory is a CUDA figure


def test_benchmark_leaves_no_tensor_alive():
    """Found on an H100: the second benchmark of a run went out of memory because every model of the
    first stayed alive (the saved-bytes probe packed saved outputs as themselves: a reference cycle
    through C++). After the fix nothing the benchmark made outlives it."""
    import gc

    from csa_lightning.attention.csa_cache import release_workspace

    def live_elements():
        release_workspace()  # CSA's per-thread CPU workspace is kept on purpose
        gc.collect()
        return sum(o.numel() for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.numel() > 10_000)

    before = live_elements()
    benchmark(depth=18, attentions=["none", "csa"], batch=2, size=32, repeats=1)
    assert live_elements() == before
