"""The model summary: GMAC by torch's flop counter plus CSA's Gram by formula, params, the table."""

import json

import pytest
import torch

from csa_lightning.models import attention_resnet
from csa_lightning.models.summary import count_cost, main, summary_table


def meta(depth, attention=None, **kw):
    with torch.device("meta"):
        return attention_resnet(depth, attention, **kw)


def test_resnet50_and_csa_r50_gmac():
    params, r50 = count_cost(meta(50))
    assert params == 25_557_032
    assert round(r50, 3) == 4.089
    _, csa = count_cost(meta(50, "csa"))
    gram = sum(c * c * s * s for c, s in [(256, 56), (512, 28), (1024, 14), (2048, 7)])  # 4 x 205,520,896
    mlp = sum(2 * c * (c // 16) for c in (256, 512, 1024, 2048))  # the gates' two linear layers
    assert csa - r50 == pytest.approx((gram + mlp) / 1e9, abs=1e-9)
    # 4.911 with the Gram alone (the figure the issue quotes), 4.912 once the gates' MLPs count too
    assert round(r50 + gram / 1e9, 3) == 4.911
    assert round(csa, 3) == 4.912


def test_gmac_does_not_depend_on_how_the_gram_is_computed(monkeypatch):
    """Only nn.Conv/nn.Linear modules are counted: a Gram written with per-sample mm (aten.mm, the
    op nn.Linear also uses) or with matmul changes nothing."""
    from csa_lightning.attention import csa as csa_module

    _, before = count_cost(meta(18, "csa"))
    original = torch.bmm
    with monkeypatch.context() as patch:

        def per_sample(a, b, out=None):
            result = torch.stack([a[i] @ b[i] for i in range(a.shape[0])])
            return result if out is None else out.copy_(result)

        patch.setattr(csa_module.torch, "bmm", per_sample)
        _, per_sample_mm = count_cost(meta(18, "csa"))
    assert torch.bmm is original
    assert per_sample_mm == before


def test_count_cost_on_a_real_model_equals_meta():
    torch.manual_seed(0)
    real = attention_resnet(18, "se")
    assert count_cost(real, size=64) == count_cost(meta(18, "se"), size=64)
    assert real.training  # restored after counting


def test_summary_table_rows_and_paper_columns():
    rows = summary_table(depths=[50], attentions=["none", "csa", "gct"])
    by_name = {r.name: r for r in rows}
    assert by_name["CSA-R50"].params == 26_257_432 and by_name["CSA-R50"].gates == 4
    assert by_name["CSA-R50"].paper_top1_err == 21.41
    assert by_name["GCT-R50"].params == by_name["ResNet-50"].params
    assert by_name["ResNet-50"].placement == "-"


def test_cli_markdown_and_json(capsys):
    main(["--depths", "50", "--attentions", "none,csa"])
    out = capsys.readouterr().out
    assert "| ResNet-50 | - | 0 | 25,557,032 | 4.089 |" in out
    assert "| CSA-R50 | stage_end | 4 | 26,257,432 | 4.912 | 26.2M | 4.12 | 21.41 |" in out
    main(["--depths", "101", "--attentions", "csa", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 45_249_560 and rows[0]["name"] == "CSA-R101"


def test_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        main(["--attentions", "csaa"])
    assert "unknown attention 'csaa'" in capsys.readouterr().err


def test_named_variant_rows_and_their_errors(capsys):
    from csa_lightning.models.summary import main

    main(["--depths", "50", "--attentions", "se", "--variant",
          'authors|csa|{"placement": "every_block", "contiguity": "hybrid", "distance": "pooled"}'])  # fmt: skip
    out = capsys.readouterr().out
    assert "| CSA-R50 (authors) | every_block | 16 | 28,088,024 | 4.484 |" in out
    with pytest.raises(SystemExit):
        main(["--depths", "50", "--variant", "broken|csa|{placement"])
    assert "options are not JSON" in capsys.readouterr().err.strip().splitlines()[-1]


def test_summary_and_benchmark_refuse_nonsense_sizes_and_depths(capsys):
    from csa_lightning.benchmark import main as benchmark_main
    from csa_lightning.models.summary import main as summary_main

    with pytest.raises(SystemExit):
        summary_main(["--depths", "18", "--size", "0"])
    assert "argument --size: must be from 1 to 4096, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark_main(["--depth", "17"])
    assert "argument --depth: invalid choice: 17 (choose from 18, 34, 50, 101, 152)" in capsys.readouterr().err
