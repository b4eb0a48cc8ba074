"""Report: PNG figures and the self-contained HTML page, from a real short training run's log and from
hand-built frames (NaN/null/zero/missing cells, one step, one module, hundreds of modules, thousands of steps)."""

from __future__ import annotations

import base64
import html.parser
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib import image as mpimg

from conftest import have_dataset
from yolo_gradmon.record.logfile import LOG_NAME, LogWriter, read_log
from yolo_gradmon.record.tables import module_frame
from yolo_gradmon.show.figures import (
    _MISSING,
    _NONFINITE,
    _VALUE,
    _ZERO,
    _grid,
    curves_png,
    heatmap_png,
    pool_layers,
)
from yolo_gradmon.show.depth_figures import depth_profile_png
from yolo_gradmon.show.report import render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}


def assert_png(path: Path, min_w: int = 300, min_h: int = 150, max_side: int = 4000) -> np.ndarray:
    """A readable PNG of sane size; returns its pixels."""
    path = Path(path)
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min_w <= w <= max_side and min_h <= h <= max_side, img.shape
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    return img


def has_colour(img: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.03, size: int = 5) -> bool:
    """Whether a solid ``size`` x ``size`` block of colour ``rgb`` is drawn (not antialiased text edges)."""
    m = (np.abs(img[..., :3] - np.asarray(rgb)) < tol).all(axis=-1)
    h, w = m.shape
    block = np.ones((h - size + 1, w - size + 1), dtype=bool)
    for dy in range(size):
        for dx in range(size):
            block &= m[dy : dy + h - size + 1, dx : dx + w - size + 1]
    return bool(block.any())


class StrictParser(html.parser.HTMLParser):
    """Tracks open elements: every non-void start tag must be closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_html(text: str) -> StrictParser:
    p = StrictParser()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack}"
    return p


# ------------------------------------------------------------------------------------------ real training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real short YOLO26n training on COCO8 with the monitor attached (shared by this module's tests)."""
    if not have_dataset("coco8"):
        pytest.skip("../shared/datasets/coco8 not found")
    from ultralytics import YOLO

    from yolo_gradmon import GradientMonitor

    tmp = tmp_path_factory.mktemp("report-run")
    m = YOLO("yolo26n.yaml")
    mon = GradientMonitor(wandb=False).attach(m)
    m.train(data="coco8.yaml", epochs=3, imgsz=160, batch=2, nbs=2, workers=0, device="cpu", plots=False,
            val=False, project=str(tmp), name="r", exist_ok=True)
    assert mon.out_dir is not None and (mon.out_dir / LOG_NAME).is_file()
    return mon


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the trained run's gradmon dir (tests may damage it)."""
    dst = tmp_path / "gradmon"
    shutil.copytree(trained.out_dir, dst)
    return dst


def test_report_written_at_train_end(trained):
    """The local sink writes report.html next to the PNGs at train end (the console prints its path)."""
    out = trained.out_dir
    assert "media" not in trained.summary  # no sink writes into the summary the others receive
    text = (out / "report.html").read_text(encoding="utf-8")
    for png in ("heatmap.png", "curves.png", "flow_by_layer.png", "activation_health.png"):
        assert_png(out / png)
    assert "Flow relative to the head, by layer" in text and "Activation health by layer" in text
    assert text.index('class="verdict') < text.index("<h2>Flags")  # the verdict opens the page


def test_live_records_equal_the_log_read_back(trained):
    """One record shape: what sinks received during training is exactly what the log reads back (plain lists, None
    for non-finite), and the summary rebuilt from the log equals the one built at train end."""
    from yolo_gradmon.record.outputs import TrainEnd

    log = read_log(trained.out_dir)
    assert trained.records == log.steps and len(log.steps) > 0
    assert all(isinstance(r["grad_norm"], list) for r in trained.records)
    rebuilt = TrainEnd.from_log(trained.out_dir).summary
    assert {k: v for k, v in rebuilt.items()} == json.loads(json.dumps(trained.summary))


def test_render_report_real_run(trained):
    out = trained.out_dir
    html_path = render_report(out)
    assert html_path == out / "report.html"
    for name in ("gradients.parquet", "steps.parquet", "summary.json"):
        assert (out / name).is_file()
    assert_png(out / "heatmap.png")
    assert_png(out / "curves.png")
    text = html_path.read_text(encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["steps_logged"] >= 3
    for module in summary["modules"]:
        assert module in text
    assert "<th>kind</th>" in text and "<th>evidence</th>" in text and "<th>likely cause</th>" in text
    assert text.count("data:image/png;base64,") == 4  # flow profile, activation health, heatmap, curves
    for layer in summary["layers"]:
        assert layer in text  # the per-layer flow / health table
    assert "<script" not in text and "<link" not in text and "http://" not in text and "https://" not in text
    parsed = parse_html(text)
    body = " ".join(parsed.text)
    assert "yolo26n.yaml" in body and "layer" in body and "training finished" in body
    assert "max |grad| are measured on one logged step in 10" in body  # the sampled columns say so
    for src in parsed.imgs:  # the embedded images decode to PNGs
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE


def test_render_report_accepts_save_dir_and_log_file(run_copy, tmp_path):
    save_dir = tmp_path / "save"
    save_dir.mkdir()
    shutil.move(str(run_copy), save_dir / "gradmon")
    assert render_report(save_dir) == save_dir / "gradmon" / "report.html"
    assert render_report(save_dir / "gradmon" / LOG_NAME) == save_dir / "gradmon" / "report.html"
    with pytest.raises(FileNotFoundError):
        render_report(tmp_path / "nowhere")


def test_report_after_crash_with_torn_line(run_copy):
    """Kill simulation: no end line, derived files gone, a half-written step line at the end."""
    for name in ("summary.json", "gradients.parquet", "steps.parquet", "heatmap.png", "curves.png", "report.html"):
        (run_copy / name).unlink(missing_ok=True)
    log = run_copy / LOG_NAME
    lines = log.read_text(encoding="utf-8").splitlines()
    step_idx = [i for i, ln in enumerate(lines) if json.loads(ln)["type"] == "step"]
    keep = lines[: step_idx[2] + 1]  # header, first three steps (and any epoch_end between)
    torn = lines[step_idx[3]][: len(lines[step_idx[3]]) // 2]
    log.write_text("\n".join(keep) + "\n" + torn, encoding="utf-8")

    html_path = render_report(run_copy)
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["steps_logged"] == 3 and summary["complete"] is False
    assert pl.read_parquet(run_copy / "gradients.parquet")["step"].n_unique() == 3
    assert_png(run_copy / "heatmap.png")
    assert_png(run_copy / "curves.png")
    text = html_path.read_text(encoding="utf-8")
    parse_html(text)
    assert "stopped before train end" in text and "torn" in text


def test_report_header_only_log(run_copy):
    """Killed before the first logged step: a report with placeholder figures, not an error."""
    log = run_copy / LOG_NAME
    log.write_text(log.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    text = render_report(run_copy).read_text(encoding="utf-8")
    parse_html(text)
    assert json.loads((run_copy / "summary.json").read_text())["steps_logged"] == 0
    assert_png(run_copy / "heatmap.png", min_h=100)


def test_flow_profile_overlays_runs(trained, tmp_path):
    log = read_log(trained.out_dir)
    frame = module_frame(log.steps, log.modules)
    scaled = frame.with_columns(pl.col("grad_norm") * 10.0)
    path = depth_profile_png({"baseline": frame, "x10": scaled}, log.modules, tmp_path / "profile.png")
    assert_png(path)
    assert_png(depth_profile_png(frame, None, tmp_path / "single.png"))


# ------------------------------------------------------------------------------------------ synthetic
def synthetic_records(modules: list[str], n_steps: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    n = len(modules)
    recs = []
    for s in range(1, n_steps + 1):
        g = (10.0 ** (2 - 4 * np.arange(n) / max(1, n - 1)) * np.exp(rng.normal(0, 0.3, n))).tolist()
        recs.append({"step": s, "epoch": 1 + (s - 1) * 3 // n_steps, "has_grad": [True] * n, "grad_norm": g,
                     "weight_norm": [1.0] * n, "grad_to_weight": list(g), "update_to_weight": [1e-4] * n,
                     "max_abs_grad": list(g), "nonfinite": [0] * n})
    return recs


def test_heatmap_nan_null_zero_missing(tmp_path):
    """Hand-built frame: null (non-finite) grad, NaN value, exact zero, module without a gradient."""
    modules = ["00.Conv", "01.Conv", "02.C3k2", "03.Detect"]
    rows = [
        # step, module, grad_norm, nonfinite
        (1, "00.Conv", 1.0, 0), (1, "01.Conv", 1e-3, 0), (1, "02.C3k2", None, 5), (1, "03.Detect", 10.0, 0),
        (2, "00.Conv", 2.0, 0), (2, "01.Conv", 0.0, 0), (2, "02.C3k2", 0.5, 0),  # 03.Detect: no gradient
        (3, "00.Conv", float("nan"), 0), (3, "01.Conv", 1e-2, 0), (3, "02.C3k2", 0.4, 0), (3, "03.Detect", 9.0, 0),
    ]
    frame = pl.DataFrame(
        {"step": [r[0] for r in rows], "epoch": [1] * len(rows), "module": [r[1] for r in rows],
         "grad_norm": [r[2] for r in rows], "nonfinite": [r[3] for r in rows]},
        schema={"step": pl.Int64, "epoch": pl.Int64, "module": pl.Utf8, "grad_norm": pl.Float64, "nonfinite": pl.Int64},
        strict=False,
    )
    steps, _, values, cat = _grid(frame, modules, "grad_norm")
    assert steps.tolist() == [1, 2, 3]
    assert cat[2, 0] == _NONFINITE and cat[0, 2] == _NONFINITE  # null with nonfinite>0; NaN grad norm
    assert cat[1, 1] == _ZERO and cat[3, 1] == _MISSING and cat[0, 0] == _VALUE
    assert values[0, 1] == 2.0 and np.isnan(values[1, 1])

    red, grey = (0.89, 0.10, 0.11), (0.66, 0.66, 0.66)
    img = assert_png(heatmap_png(frame, modules, tmp_path / "h.png"))
    assert has_colour(img, red) and has_colour(img, grey)  # non-finite cells + step markers; the missing cell
    clean = pl.DataFrame({"step": [1, 1, 2, 2], "epoch": [1] * 4, "module": modules[:2] * 2,
                          "grad_norm": [1.0, 2.0, 3.0, 4.0], "nonfinite": [0] * 4})
    clean_img = assert_png(heatmap_png(clean, modules[:2], tmp_path / "clean.png"))
    assert not has_colour(clean_img, red) and not has_colour(clean_img, grey)
    assert_png(curves_png(frame, modules, tmp_path / "c.png"))
    assert_png(depth_profile_png({"a": frame, "b": frame}, modules, tmp_path / "p.png"))
    # a column with no values at all (update_ratio off) still renders
    nulls = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("update_to_weight"))
    assert_png(heatmap_png(nulls, modules, tmp_path / "u.png", column="update_to_weight"))
    assert_png(curves_png(nulls, modules, tmp_path / "uc.png", column="update_to_weight"), min_h=100)
    with pytest.raises(ValueError, match="not in the frame"):
        heatmap_png(frame, modules, tmp_path / "x.png", column="no_such_column")


@pytest.mark.parametrize(
    "n_modules, n_steps",
    [(1, 1), (1, 40), (18, 1), (360, 60), (24, 2500)],
    ids=["1x1", "1-module", "1-step", "param-granularity", "long-run"],
)
def test_figure_shapes(tmp_path, n_modules, n_steps):
    modules = [f"{i // 15:02d}.Block.m.{i % 15}.weight" for i in range(n_modules)] if n_modules > 50 else \
        [f"{i:02d}.Conv" for i in range(n_modules)]
    frame = module_frame(synthetic_records(modules, n_steps), modules)
    img = assert_png(heatmap_png(frame, modules, tmp_path / "h.png"))
    assert img.shape[0] < 1600 and img.shape[1] < 1600  # hundreds of modules / thousands of steps stay bounded
    assert_png(curves_png(frame, modules, tmp_path / "c.png"))


def test_pool_layers_is_exact_l2():
    modules = ["00.Conv.conv.weight", "00.Conv.bn.weight", "01.C3k2.cv1.conv.weight"]
    frame = module_frame(synthetic_records(modules, 3), modules)
    pooled, layers = pool_layers(frame, modules)
    assert layers == ["00.Conv", "01.C3k2"]
    got = pooled.filter((pl.col("step") == 2) & (pl.col("module") == "00.Conv"))["grad_norm"].item()
    parts = frame.filter((pl.col("step") == 2) & pl.col("module").str.starts_with("00."))["grad_norm"].to_numpy()
    assert got == pytest.approx(float(np.sqrt((parts**2).sum())))


def test_pool_layers_grad_to_weight_uses_the_last_measured_weight_norms():
    """Weight norms are sampled (null between samples): a pooled layer's grad/weight divides by its modules' last
    measured weight norms, as the capture does per module; its weight norm stays null where none was measured."""
    f = pl.DataFrame({"step": [1, 1, 2, 2], "epoch": [1] * 4, "module": ["02.C3k2.a", "02.C3k2.b"] * 2,
                      "grad_norm": [3.0, 4.0, 6.0, 8.0], "weight_norm": [1.0, 1.0, None, None],
                      "grad_to_weight": [3.0, 4.0, 6.0, 8.0], "max_abs_grad": [1.0, 2.0, None, None], "nonfinite": [0] * 4})
    pooled, _ = pool_layers(f, ["02.C3k2.a", "02.C3k2.b"])
    assert pooled["grad_to_weight"].to_list() == pytest.approx([5 / 2**0.5, 10 / 2**0.5])
    assert pooled["weight_norm"].to_list()[1] is None and pooled["max_abs_grad"].to_list() == [2.0, None]
    assert "_w_used" not in pooled.columns


def test_figures_leave_no_pyplot_state(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    modules = [f"{i:02d}.Conv" for i in range(5)]
    frame = module_frame(synthetic_records(modules, 10), modules)
    for k in range(3):
        heatmap_png(frame, modules, tmp_path / f"h{k}.png")
        curves_png(frame, modules, tmp_path / f"c{k}.png")
    assert plt.get_fignums() == before


def test_flags_show_their_cause_and_the_verdict_says_what_would_judge(tmp_path):
    """A vanishing flag's evidence["cause"] is its own column; a short run's verdict names nbs/epochs from its numbers."""
    from yolo_gradmon.show.report import _html_page

    summary = {"model": "m.yaml", "granularity": "layer", "modules": ["00.Conv"], "steps_logged": 3, "config": {},
               "too_few_steps": False, "verdict": "judged on 9 logged optimizer step(s)", "flagged_modules": ["00.Conv"],
               "flags": [{"kind": "vanishing", "module": "00.Conv", "first_step": 4, "last_step": 9, "active": True,
                          "evidence": {"flow_attenuation": 3e-7, "cause": "saturated Sigmoid units (92 %)"}}]}
    text = _html_page(summary, None, tmp_path / "gradients.jsonl", {})
    assert "<td>saturated Sigmoid units (92 %)</td>" in text and "flow_attenuation=3e-07" in text
    assert "1 module(s) flagged (vanishing): 00.Conv" in text
    from yolo_gradmon.record.summary import judgement

    header = {"config": {"log_every": 1}, "train": {"batch": 2, "nbs": 64, "batches_per_epoch": 2, "epochs": 1}}
    few, verdict = judgement(header, [{"step": 1, "epoch": 1}])
    assert few and verdict.startswith("too few steps to judge: 1 logged optimizer step(s)")
    assert "accumulate 32" in verdict and "nbs=2" in verdict and "epochs=80 at nbs=64" in verdict


def test_html_escapes_module_names(tmp_path):
    """A synthetic log whose module names carry markup: the page shows them as text."""
    modules = ["00.Conv<b>", '01.A&B"x"', "02.<script>alert(1)</script>"]
    out = tmp_path / "run" / "gradmon"
    w = LogWriter(out / LOG_NAME, append=False)
    w.write({"type": "header", "schema": 1, "model": "m<i>.yaml", "task": "detect", "granularity": "layer",
             "modules": modules, "trainable": [True] * 3, "numel": [1, 2, 3], "layer_index": [0, 1, 2],
             "config": {"log_every": 1, "min_steps": 3}})
    for rec in synthetic_records(modules, 6):
        w.write({"type": "step", "lr": [0.01], "amp_scale": None, "amp_skipped": None, "total_norm": 1.0,
                 "clip_active": False, "warmup": False, **rec})
    w.close()
    text = render_report(tmp_path / "run").read_text(encoding="utf-8")
    parsed = parse_html(text)
    assert "<script>" not in text and "<b>" not in text and "m<i>" not in text
    assert "02.&lt;script&gt;alert(1)&lt;/script&gt;" in text and "01.A&amp;B&quot;x&quot;" in text
    body = " ".join(parsed.text)
    assert all(m in body for m in modules)
