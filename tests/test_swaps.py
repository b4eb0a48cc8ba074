"""Activation swaps and structural ablations (yolo_gradmon/ablate/swaps.py), down to the trainer's model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import requires_coco8
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.modules import Conv
from ultralytics.nn.modules.block import HGStem, RepVGGDW
from ultralytics.nn.modules.conv import ChannelAttention
from ultralytics.nn.modules.transformer import MLPBlock, TransformerEncoderLayer
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from yolo_gradmon.ablate import swaps
from yolo_gradmon.ablate.activation_names import ACTIVATIONS, canonical_activation, make_activation
from yolo_gradmon.ablate.swaps import (
    VariantYOLO,
    apply_variant,
    build_model_with_activation,
    count_activations,
    count_norms,
    count_shortcuts,
    disable_norm,
    disable_shortcuts,
    swap_activations,
    variant_of,
)

# the installed Ultralytics' stock models: activation slots (all Conv.act SiLU), BatchNorms, active shortcuts
STOCK = {"yolo26n.yaml": (105, 114), "yolo11n.yaml": (77, 81)}
X = torch.zeros(1, 3, 64, 64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 64x64 forwards: one intra-op thread is as fast, and immune to oversubscription when the 2-core
    machine is shared (measured: 7 s vs 64 s for these files with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built():
    """One DetectionModel per stock YAML, built once; tests deep-copy it."""
    return {name: YOLO(name).model for name in STOCK}


def fresh(built, name):
    return copy.deepcopy(built[name])


def runs_both_modes(model: nn.Module) -> None:
    model.train()
    out = model(X)
    assert isinstance(out, (dict, list, tuple, torch.Tensor))
    model.eval()
    with torch.no_grad():
        out = model(X)
    pred = out[0] if isinstance(out, (list, tuple)) else out
    assert torch.isfinite(pred).all()


def neck_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode output of the last layer before Detect (the stock heads' outputs at init barely depend on it)."""
    out = {}
    handle = model.model[-2].register_forward_hook(lambda m, i, o: out.setdefault("y", o.detach().clone()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return out["y"]


def identity_placeholders(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules(remove_duplicate=False)
            if type(m) is nn.Identity and not hasattr(m, "_gradmon_act") and not hasattr(m, "_gradmon_norm_removed")]


# ---------------------------------------------------------------------------------------------------- registry
EXPECTED_TYPES = {
    "silu": nn.SiLU, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "gelu": nn.GELU, "mish": nn.Mish,
    "hardswish": nn.Hardswish, "elu": nn.ELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity,
}


@pytest.mark.parametrize("name, cls", EXPECTED_TYPES.items())
def test_registry_makes_fresh_modules(name, cls):
    a, b = make_activation(name), make_activation(name.upper())
    assert type(a) is cls and type(b) is cls and a is not b
    assert name in ACTIVATIONS


@pytest.mark.parametrize("spelling, key", [("SiLU", "silu"), ("swish", "silu"), ("LeakyReLU", "leakyrelu"),
                                           ("leaky_relu", "leakyrelu"), ("leaky-relu", "leakyrelu"),
                                           ("nn.ReLU()", "relu"), ("Hard_Swish", "hardswish"), ("linear", "identity")])
def test_names_case_insensitive_with_aliases(spelling, key):
    assert canonical_activation(spelling) == key


def test_leakyrelu_uses_yolo_slope():
    assert make_activation("leakyrelu").negative_slope == pytest.approx(0.1)


@pytest.mark.parametrize("bad", ["NotAnActivation", "softmax", "", "re lu x"])
def test_unknown_activation_lists_valid_names_sorted(bad):
    with pytest.raises(ValueError) as e:
        make_activation(bad)
    msg = str(e.value)
    assert repr(bad) in msg
    listed = msg.split("valid names: ")[1].split(" (")[0].split(", ")
    assert listed == sorted(ACTIVATIONS) and {"silu", "relu", "sigmoid", "identity"} <= set(listed)


# ---------------------------------------------------------------------------------------------------- swaps on stock models
@pytest.mark.parametrize("yaml_name", list(STOCK))
def test_stock_models_have_only_conv_act_silu(built, yaml_name):
    """What the installed Ultralytics hard-codes: nothing outside Conv for these two detectors."""
    model = built[yaml_name]
    n_act, _ = STOCK[yaml_name]
    assert count_activations(model) == {"SiLU": n_act}
    parents = [p for p, _, _, _ in swaps._slots(model, swaps.is_activation)]
    assert all(isinstance(p, Conv) for p in parents)


@pytest.mark.parametrize("yaml_name", list(STOCK))
@pytest.mark.parametrize("target, cls", [("relu", nn.ReLU), ("Sigmoid", nn.Sigmoid), ("gelu", nn.GELU),
                                         ("identity", nn.Identity)])
def test_swap_replaces_every_activation(built, yaml_name, target, cls):
    model = fresh(built, yaml_name)
    n_act, _ = STOCK[yaml_name]
    placeholders = identity_placeholders(model)
    report = swap_activations(model, target)
    assert report.replaced == {"SiLU": n_act} and report.total == n_act and len(report.modules) == n_act
    assert report.target == canonical_activation(target)
    assert count_activations(model) == {cls.__name__: n_act}  # the requested type only, none of the original
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert identity_placeholders(model) == placeholders  # Conv(act=False) / Detect.dfl placeholders untouched
    slots = [c for _, _, _, c in swaps._slots(model, swaps.is_activation)]
    assert len({id(c) for c in slots}) == n_act  # one fresh module per slot (Ultralytics shares one SiLU)
    runs_both_modes(model)


def test_swap_to_relu_never_turns_placeholders_into_activations(built):
    model = fresh(built, "yolo26n.yaml")
    swap_activations(model, "relu")
    assert type(model.model[9].cv1.act) is nn.Identity  # YOLO26's unactivated SPPF cv1
    assert type(model.model[10].m[0].attn.qkv.act) is nn.Identity  # linear attention projections
    assert type(model.model[23].dfl) is nn.Identity  # reg_max=1 DFL placeholder


def test_swap_back_from_identity(built):
    model = fresh(built, "yolo11n.yaml")
    swap_activations(model, "identity")
    report = swap_activations(model, "tanh")  # inserted identities are still activation slots
    assert report.replaced == {"Identity": 77} and count_activations(model) == {"Tanh": 77}


def test_swap_does_not_touch_conv_default_act(built):
    before = Conv.default_act
    swap_activations(fresh(built, "yolo26n.yaml"), "relu")
    assert Conv.default_act is before and type(before) is nn.SiLU
    assert count_activations(YOLO("yolo11n.yaml")) == {"SiLU": 77}  # later models unaffected


def test_include_restricts_swap(built):
    model = fresh(built, "yolo26n.yaml")
    head = sum(1 for _, _, q, _ in swaps._slots(model, swaps.is_activation) if q.startswith("model.23."))
    report = swap_activations(model, "relu", include="model.23.*")
    assert report.total == head > 0 and all(n.startswith("model.23.") for n in report.modules)
    assert count_activations(model) == {"ReLU": head, "SiLU": 105 - head}
    report = swap_activations(model, "elu", include=lambda name, m: isinstance(m, nn.ReLU))
    assert report.replaced == {"ReLU": head}


class HardCoded(nn.Module):
    """Ultralytics blocks whose activations are hard-coded outside Conv.default_act, plus plain torch ones."""

    def __init__(self):
        super().__init__()
        self.stem = HGStem(3, 8, 16)  # Conv(..., act=nn.ReLU()) x5
        self.repvgg = RepVGGDW(16)  # self.act = nn.SiLU()
        self.enc = TransformerEncoderLayer(16, cm=32, num_heads=2)  # self.act = nn.GELU()
        self.mlp = MLPBlock(16, 32)  # act=nn.GELU
        shared = nn.Tanh()
        self.head = nn.Sequential(nn.Linear(16, 16), shared, nn.Linear(16, 16), shared)  # one instance, two slots
        self.gate = ChannelAttention(16)  # sigmoid gate: excluded by default

    def forward(self, x):
        x = self.repvgg(self.stem(x))
        x = self.gate(x)
        b, c, h, w = x.shape
        t = x.flatten(2).permute(0, 2, 1)
        t = self.mlp(self.enc(t))
        return self.head(t)


def test_swap_catches_activations_hard_coded_outside_conv():
    model = HardCoded()
    before = count_activations(model)
    assert before == {"GELU": 2, "ReLU": 5, "SiLU": 1, "Tanh": 2}  # gate's Sigmoid excluded
    report = swap_activations(model, "mish")
    assert report.replaced == before and report.total == 10
    assert count_activations(model) == {"Mish": 10}
    assert type(model.gate.act) is nn.Sigmoid  # gates are not feature activations
    assert model(torch.zeros(1, 3, 32, 32)).shape[-1] == 16
    report = swap_activations(model, "relu", exclude=())
    assert report.replaced == {"Mish": 10, "Sigmoid": 1} and type(model.gate.act) is nn.ReLU


def test_zero_replacement_is_an_error(built):
    with pytest.raises(ValueError, match="replaced nothing"):
        swap_activations(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Identity(), nn.BatchNorm2d(3)), "relu")
    with pytest.raises(ValueError, match="replaced nothing.*include"):
        swap_activations(fresh(built, "yolo11n.yaml"), "relu", include="model.99.*")
    with pytest.raises(ValueError, match="valid names"):
        swap_activations(fresh(built, "yolo11n.yaml"), "reLUX")


# ---------------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("yaml_name", list(STOCK))
def test_disable_shortcuts(built, yaml_name):
    model = fresh(built, yaml_name).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = neck_output(model, x)
    active = count_shortcuts(model)
    n = disable_shortcuts(model)
    assert n == active > 0 and count_shortcuts(model) == 0
    assert all(not m.add for m in model.modules() if type(m).__name__ in ("Bottleneck", "PSABlock"))
    # the residual paths really are gone (relative: an untrained net's eval features are ~1e-9 in scale)
    assert (neck_output(model, x) - ref).abs().max() > 0.1 * ref.abs().max()
    runs_both_modes(model)
    with pytest.raises(ValueError, match="changed nothing"):
        disable_shortcuts(model)


@pytest.mark.parametrize("yaml_name", list(STOCK))
def test_disable_norm(built, yaml_name):
    model = fresh(built, yaml_name)
    _, n_bn = STOCK[yaml_name]
    assert count_norms(model) == {"BatchNorm2d": n_bn}
    assert disable_norm(model) == n_bn
    assert count_norms(model) == {} and not any("bn." in k for k in model.state_dict())
    runs_both_modes(model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    unfused = neck_output(model, x)
    model.fuse(verbose=False)  # what the validator does with best.pt: the identity stand-ins fold exactly
    assert not any(hasattr(m, "bn") for m in model.modules() if isinstance(m, Conv))
    assert (neck_output(model, x) - unfused).abs().max() <= 1e-4 * unfused.abs().max()
    with pytest.raises(ValueError, match="changed nothing"):
        disable_norm(model)


# ---------------------------------------------------------------------------------------------------- entry points
def test_apply_variant_report_and_errors():
    with pytest.raises(ValueError, match="valid names"):
        apply_variant("yolo26n.yaml", activation="swishy")  # before building anything
    with pytest.raises(ValueError, match="true or false"):
        apply_variant("yolo26n.yaml", shortcut="no")
    model, report = apply_variant("yolo26n.yaml", activation="relu", shortcut=False, norm=False)
    assert isinstance(model, VariantYOLO)
    assert report["activations_replaced"] == {"SiLU": 105} and report["activations_total"] == 105
    assert report["activation_counts"] == {"ReLU": 105}
    assert report["shortcuts_disabled"] > 0 and report["norms_removed"] == 114
    json.dumps(report)  # the runner stores it as JSON
    spec = variant_of(model)
    assert (spec.activation, spec.shortcut, spec.norm) == ("relu", False, False)
    assert model.model.yaml["activation"] == "nn.ReLU()" and model.model.yaml["gradmon_variant"][1:] == [
        {"shortcut": False}, {"norm": False}]
    baseline, report = apply_variant("yolo11n.yaml")
    assert type(baseline) is YOLO and report["activation_counts"] == {"SiLU": 77} and report["activations_total"] == 0


def test_build_model_with_activation_and_yaml_key_behaviour():
    saved = Conv.default_act
    model, report = build_model_with_activation("yolo11n.yaml", "GELU")
    assert report.replaced == {"SiLU": 77} and count_activations(model) == {"GELU": 77}
    assert model.model.yaml["activation"] == "nn.GELU()"
    assert Conv.default_act is saved
    # the installed Ultralytics' own `activation:` key sets Conv.default_act during parse_model, restores it after
    cfg = yaml_model_load("yolo11n.yaml")
    cfg["activation"] = "nn.ReLU()"
    assert count_activations(DetectionModel(cfg, verbose=False)) == {"ReLU": 77}
    assert Conv.default_act is saved
    with pytest.raises(ValueError, match="model YAML"):
        build_model_with_activation("yolo11n.pt", "relu")


# ---------------------------------------------------------------------------------------------------- the trainer's model
class _Stop(Exception):
    pass


def trainer_model_facts(model, run_dir, name, train=False):
    """Start model.train() and capture trainer.model facts at on_train_start (then abort unless ``train``)."""
    seen = {}

    def capture(trainer):
        seen.update(trainer=type(trainer).__name__, acts=count_activations(trainer.model),
                    norms=count_norms(trainer.model), shortcuts=count_shortcuts(trainer.model),
                    ema=count_activations(trainer.ema.ema), model=trainer.model)
        if not train:
            raise _Stop

    model.add_callback("on_train_start", capture)
    try:
        model.train(data="coco8.yaml", epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, val=False,
                    project=str(run_dir), name=name, exist_ok=True, verbose=False)
    except _Stop:
        pass
    finally:
        model.callbacks["on_train_start"].remove(capture)
    return seen


@requires_coco8
def test_modifications_reach_trainer_model(run_dir):
    # YAML-built: Model.train hands the trainer the YAML path; setup_model -> our get_model rebuilds + re-applies
    model, _ = apply_variant("yolo26n.yaml", activation="sigmoid", shortcut=False, norm=False)
    seen = trainer_model_facts(model, run_dir, "yaml", train=True)  # one tiny real epoch (~4 s)
    assert seen["trainer"] == "VariantDetectionTrainer"
    assert seen["acts"] == {"Sigmoid": 105} and seen["ema"] == {"Sigmoid": 105}
    assert seen["norms"] == {} and seen["shortcuts"] == 0
    # after training the object holds best.pt (pickled modules): still the variant, and it fused for final val
    assert count_activations(model) == {"Sigmoid": 105} and count_norms(model) == {}
    assert model.ckpt and isinstance(model, VariantYOLO)

    # checkpoint path: Model.train calls get_model(cfg=model.yaml, weights=model): rebuild, re-apply, then load
    trained = {k: v.clone() for k, v in model.model.state_dict().items()}
    seen = trainer_model_facts(model, run_dir, "ckpt")
    assert seen["acts"] == {"Sigmoid": 105} and seen["norms"] == {} and seen["shortcuts"] == 0
    sd = seen["model"].state_dict()
    assert set(sd) == set(trained)
    assert all(torch.equal(sd[k].float().cpu(), trained[k].float()) for k in ("model.0.conv.weight", "model.22.cv1.conv.weight"))

    # a plain YOLO trained afterwards is untouched by the variant machinery
    seen = trainer_model_facts(YOLO("yolo26n.yaml"), run_dir, "plain")
    assert seen["trainer"] == "DetectionTrainer" and seen["acts"] == {"SiLU": 105} and seen["norms"] == {"BatchNorm2d": 114}


@requires_coco8
def test_low_level_swap_on_yolo_object_survives_training(run_dir):
    model = YOLO("yolo11n.yaml")
    swap_activations(model, "hardswish", include="model.23.*")  # recorded on the YOLO object
    head = count_activations(model)["Hardswish"]
    seen = trainer_model_facts(model, run_dir, "lowlevel")
    assert seen["acts"] == {"Hardswish": head, "SiLU": 77 - head}
