"""AdaLoRA and VeRA (``network.type = "adalora" | "vera"``): they learn, AdaLoRA's budget ends where it should
and survives a resume, and both export as a plain kohya LoRA whose ΔW is the trained one and which diffusers
loads with every key consumed.

Real tiny models (the builtins), fixed seeds, CPU. Files are written in fp32 so that "ΔW equals the trained
delta" is checked at fp32 tolerance by the self-check (``delta_check``: the kind's rounding bound).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import trainer.train as train_module
from trainer.config import Config, ModelConfig, validate
from trainer.export import TrainingMetadata, export_adapter
from trainer.export.delta_check import trained_delta
from trainer.models.loading import load_base_model
from trainer.network import ADAPTER_NAME, adapter_layers, inject_lora
from trainer.networks.adalora_allocation import RankAllocation

MODELS = {"sd": "builtin:tiny-sd", "sdxl": "builtin:tiny-sdxl"}


@pytest.fixture(scope="module")
def bases():
    return {name: load_base_model(ModelConfig(base=base)) for name, base in MODELS.items()}


def variant_cfg(net_type: str, rank: int, **extra) -> Config:
    cfg = Config()
    cfg.run.name = net_type
    cfg.network.type, cfg.network.rank, cfg.network.alpha = net_type, rank, float(rank)
    cfg.network.train_text_encoder = True
    for key, value in extra.items():
        setattr(cfg.network, key, value)
    cfg.export.format, cfg.export.dtype = "kohya", "fp32"
    return cfg


def fixed_batch(model):
    """One fixed epsilon-objective batch (latents, noise, timesteps, conditioning) for the UNet."""
    gen = torch.Generator().manual_seed(0)
    config = model.unet.config
    latents = torch.randn(2, config.in_channels, 8, 8, generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.tensor([150, 650])
    kwargs = {}
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, text_dim, generator=gen),
            "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2),
        }
    hidden = torch.randn(2, 8, config.cross_attention_dim, generator=gen)
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    return noisy, timesteps, hidden, kwargs, noise


def unet_loss(model, batch) -> torch.Tensor:
    noisy, timesteps, hidden, kwargs, noise = batch
    return F.mse_loss(model.unet(noisy, timesteps, encoder_hidden_states=hidden, **kwargs).sample, noise)


def train_unet(model, steps: int, allocation: RankAllocation | None = None, lr: float = 1e-2) -> tuple[float, float]:
    """Our loop's order on a fixed batch: loss (+ AdaLoRA's regulariser), backward, step, allocate, zero_grad."""
    batch = fixed_batch(model)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with torch.no_grad():
        before = unet_loss(model, batch).item()
    for step in range(1, steps + 1):
        loss = unet_loss(model, batch)
        if allocation is not None:
            loss = loss + allocation.orthogonal_regulariser()
        loss.backward()
        optimizer.step()
        if allocation is not None:
            allocation.update(step)
        optimizer.zero_grad()
    with torch.no_grad():
        after = unet_loss(model, batch).item()
    return before, after


def kept_triplets(module) -> dict[str, int]:
    return {name: int((layer.lora_E[ADAPTER_NAME] != 0).sum()) for name, layer in adapter_layers(module).items()}


def file_header(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


# ---------------------------------------------------------------------------------------------
# AdaLoRA


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_adalora_learns_spends_exactly_its_budget_and_exports_the_trained_delta(bases, tmp_path, family):
    steps, rank, init = 12, 2, 4
    cfg = variant_cfg("adalora", rank, adalora_init_rank=init, adalora_tinit=2, adalora_tfinal=3, train_text_encoder=False)
    cfg.network.alpha = 32.0  # λ starts at 0 and P, Q at std 0.02: a large scale learns in a few steps
    model = copy.deepcopy(bases[family])
    inject_lora(model, cfg.network, total_steps=steps)
    allocation = RankAllocation.for_components({"unet": model.unet})
    before, after = train_unet(model, steps, allocation, lr=2e-2)
    assert after < 0.98 * before, f"AdaLoRA did not learn the fixed batch: {before:.4f} -> {after:.4f}"

    kept = kept_triplets(model.unet)
    assert sum(kept.values()) == rank * len(kept), f"total rank after tfinal is the budget {rank}×{len(kept)}, got {sum(kept.values())}"
    assert len(set(kept.values())) > 1, "the budget moved between layers (not the same rank everywhere)"
    assert max(kept.values()) <= init

    [kohya, peft] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(steps=steps), verify=True)
    assert kohya.verified is True, kohya.message
    assert "loaded by diffusers" in kohya.message and "ΔW from the file equals the trained delta" in kohya.message
    tensors = load_file(str(kohya.path))
    ranks = sorted(int(v.shape[0]) for k, v in tensors.items() if k.endswith("lora_down.weight"))
    assert ranks == sorted(r for r in kept.values() if r), "each module's file rank is its number of kept triplets"
    alphas = {v.item() for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {float(rank)}, "one alpha (the target rank) for the file; each module's scale is in lora_up"
    header = file_header(kohya.path)
    assert header["ss_network_dim"] == "Dynamic" and header["ss_network_alpha"] == "Dynamic"
    assert json.loads(header["ss_network_args"])["method"] == "adalora"
    assert sum(json.loads(header["lora_studio_rank_per_block"]).values()) == rank * len(kept)
    assert (peft.path / "unet" / "adapter_config.json").is_file() and (peft.path / "unet" / "rank_pattern.json").is_file()


def test_adalora_on_convolutions_exports_the_trained_delta(bases, tmp_path):
    """With `network.conv_rank` the ResNet convolutions get PEFT's SVDConv2d: Q is (r, in·kh·kw), written as a
    (k, in, kh, kw) conv `lora_down` that diffusers loads."""
    cfg = variant_cfg("adalora", 2, adalora_init_rank=4, conv_rank=2, train_text_encoder=False)
    cfg.network.alpha = 32.0
    model = copy.deepcopy(bases["sd"])
    inject_lora(model, cfg.network, total_steps=6)
    assert any(isinstance(layer.get_base_layer(), torch.nn.Conv2d) for layer in adapter_layers(model.unet).values())
    train_unet(model, 6, RankAllocation.for_components({"unet": model.unet}), lr=2e-2)
    [kohya, _] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert kohya.verified is True, kohya.message
    assert any(v.dim() == 4 for k, v in load_file(str(kohya.path)).items() if k.endswith("lora_down.weight"))


def test_adalora_layer_without_budget_writes_no_keys_and_the_file_still_checks(bases, tmp_path):
    cfg = variant_cfg("adalora", 2, train_text_encoder=False)
    model = copy.deepcopy(bases["sd"])
    inject_lora(model, cfg.network, total_steps=10)
    layers = adapter_layers(model.unet)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_E[ADAPTER_NAME].normal_()
        empty = sorted(layers)[0]
        layers[empty].lora_E[ADAPTER_NAME].zero_()
        assert trained_delta(layers[empty]).abs().max() == 0
    [kohya, _] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert kohya.verified is True, kohya.message
    name = "lora_unet_" + empty.replace(".", "_")
    keys = load_file(str(kohya.path))
    assert not any(k.startswith(name + ".") for k in keys), f"{empty} has rank 0 and must get no keys"
    assert len({k.rsplit(".", 2)[0] for k in keys if k.endswith("lora_down.weight")}) == len(layers) - 1


def test_adalora_file_checks_fail_when_the_scale_is_not_folded(bases, tmp_path, monkeypatch):
    """The self-check guards the export formula: writing λ without PEFT's alpha / ranknum is caught."""
    from trainer.networks import adalora

    cfg = variant_cfg("adalora", 2, train_text_encoder=False)
    cfg.network.alpha = 5.0
    model = copy.deepcopy(bases["sd"])
    inject_lora(model, cfg.network, total_steps=10)
    with torch.no_grad():
        for layer in adapter_layers(model.unet).values():
            layer.lora_E[ADAPTER_NAME].normal_()
    original = adalora.AdaLoraKind.file_parts

    def unscaled(self, layer, adapter):
        parts, alpha = original(self, layer, adapter)
        return {**parts, "lora_up.weight": parts["lora_up.weight"] * float(layer.ranknum[adapter] + 1e-5) / layer.scaling[adapter]}, alpha

    monkeypatch.setattr(adalora.AdaLoraKind, "file_parts", unscaled)
    [kohya, _] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert kohya.verified is False and "ΔW from the file differs" in kohya.message


def test_adalora_native_peft_folder_reloads_to_the_same_model(bases, tmp_path):
    from peft import AdaLoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    cfg = variant_cfg("adalora", 2, adalora_tfinal=2, train_text_encoder=False)
    model = copy.deepcopy(bases["sd"])
    inject_lora(model, cfg.network, total_steps=8)
    train_unet(model, 8, RankAllocation.for_components({"unet": model.unet}))
    [_, peft] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=False)
    fresh = copy.deepcopy(bases["sd"])
    config = AdaLoraConfig.from_pretrained(str(peft.path / "unet"))
    inject_adapter_in_model(config, fresh.unet, adapter_name=ADAPTER_NAME)
    result = set_peft_model_state_dict(fresh.unet, load_file(str(peft.path / "unet" / "adapter_model.safetensors")))
    assert not result.unexpected_keys, result.unexpected_keys
    batch = fixed_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(unet_loss(fresh, batch), unet_loss(model, batch), rtol=0, atol=1e-6)


@pytest.mark.slow  # three real runs (~25 s alone)
def test_adalora_stop_and_resume_ends_with_the_same_masks_and_adapter(make_config, monkeypatch):
    """The real loop with gradient accumulation: stopped at step 5 (mid-schedule) and resumed, it ends with the
    uninterrupted run's rank pattern, scores and weights, bit for bit on the CPU."""
    from trainer.checkpoint import LORA_FILE, latest_checkpoint
    from trainer.events import read_events
    from trainer.networks.adalora_allocation import STATE_FILE, STATE_KEY
    from trainer.train import train

    common = dict(network__type="adalora", network__rank=2, network__alpha=2.0, network__adalora_init_rank=4,
                  network__adalora_tinit=2, network__adalora_tfinal=3, network__train_text_encoder=True,
                  training__max_steps=10, training__gradient_accumulation_steps=2, optimizer__learning_rate=1e-2,
                  checkpoint__every_n_steps=5, export__verify=True, export__dtype="fp32")
    full = make_config("full", **common)
    assert train(full, show_progress=False).status == "completed"

    part = make_config("part", **common)
    original = train_module.report_step

    def stop_at_step_5(s, *args):
        original(s, *args)
        if s.progress.step == 5:
            (s.run_dir / "STOP").touch()

    monkeypatch.setattr(train_module, "report_step", stop_at_step_5)
    assert train(part, show_progress=False).status == "stopped"
    monkeypatch.setattr(train_module, "report_step", original)
    assert train(part, resume=True, show_progress=False).status == "completed"

    a, b = latest_checkpoint(full.run_dir), latest_checkpoint(part.run_dir)
    weights_a, weights_b = load_file(str(a / LORA_FILE)), load_file(str(b / LORA_FILE))
    assert weights_a.keys() == weights_b.keys() and any(".lora_E." in k for k in weights_a)
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=0, msg=f"{key}: resumed != uninterrupted")
    assert json.loads(file_header(b / STATE_FILE)[STATE_KEY]) == json.loads(file_header(a / STATE_FILE)[STATE_KEY])
    [ranks_a], ranks_b = [e for e in read_events(full.run_dir) if e["type"] == "ranks"], [
        e for e in read_events(part.run_dir) if e["type"] == "ranks"]
    assert ranks_b[-1]["blocks"] == ranks_a["blocks"] and ranks_a["total_rank"] == 2 * ranks_a["layers"]
    [export] = [e for e in read_events(full.run_dir) if e["type"] == "export" and e["format"] == "kohya"]
    assert export["verified"] is True, export["message"]


@pytest.mark.parametrize("overrides,message", [
    ({"network.type": "adalora", "network.adalora_init_rank": 2}, "`network.adalora_init_rank` must be 0"),
    ({"network.type": "adalora", "network.adalora_tinit": 60, "network.adalora_tfinal": 40}, "must be below the run's 100 steps"),
    ({"network.type": "adalora", "network.adalora_beta1": 1.0}, "`network.adalora_beta1` must be between 0 and 1"),
    ({"network.type": "adalora", "network.adalora_delta_t": 0}, "`network.adalora_delta_t` must be at least 1"),
    ({"network.type": "adalora", "training.ema_decay": 0.99}, "`training.ema_decay` does not combine"),
    ({"network.type": "vera", "network.block_dims": "4"}, "`network.block_dims` does not apply"),
    ({"network.type": "vera", "network.init_from": "x.safetensors"}, "`network.init_from` cannot start a `vera` run"),
    ({"network.type": "loha", "network.rank_allocation": "importance"}, "works with `network.type` \"lora\" or \"locon\""),
    ({"network.rank_allocation": "importance", "network.importance_probe_steps": 0}, "`network.importance_probe_steps` must"),
    ({"network.rank_allocation": "importance", "network.block_dims": "4"}, "leave `network.block_dims`"),
])
def test_bad_variant_settings_name_the_field(overrides, message):
    cfg = Config()
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    problems = validate(cfg)
    assert any(message in p for p in problems), problems


# ---------------------------------------------------------------------------------------------
# VeRA


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_vera_learns_with_a_tenth_of_loras_parameters_and_exports_the_trained_delta(bases, tmp_path, family):
    rank = 16
    lora_cfg, vera_cfg = variant_cfg("lora", rank), variant_cfg("vera", rank, vera_projection_seed=3)
    lora_count = inject_lora(copy.deepcopy(bases[family]), lora_cfg.network).num_trainable
    model = copy.deepcopy(bases[family])
    vera = inject_lora(model, vera_cfg.network)
    assert vera.num_trainable <= 0.10 * lora_count, f"VeRA trains {vera.num_trainable}, LoRA {lora_count}"
    before, after = train_unet(model, 8, lr=5e-2)
    assert after < 0.98 * before, f"VeRA did not learn the fixed batch: {before:.4f} -> {after:.4f}"
    with torch.no_grad():  # the text encoder's vectors too, so its keys are checked on a non-zero update
        for name, p in model.text_encoder.named_parameters():
            if "vera_lambda_b" in name:
                p.normal_()
    [kohya, peft] = export_adapter(model, vera_cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert kohya.verified is True, kohya.message
    assert "loaded by diffusers" in kohya.message and "ΔW from the file equals the trained delta" in kohya.message
    header = file_header(kohya.path)
    assert header["ss_network_dim"] == str(rank) and json.loads(header["ss_network_args"])["method"] == "vera"
    assert (peft.path / "unet" / "adapter_model.safetensors").is_file()


def test_vera_skips_convolutions_with_a_note(bases):
    cfg = variant_cfg("vera", 4, unet_targets="kohya", conv_rank=4)
    model = copy.deepcopy(bases["sd"])
    network = inject_lora(model, cfg.network)
    assert any("adapts Linear layers only" in w and "skipped" in w for w in network.warnings), network.warnings
    assert all(isinstance(layer.get_base_layer(), torch.nn.Linear) for layer in adapter_layers(model.unet).values())


def test_preflight_refuses_an_adalora_schedule_longer_than_an_epoch_run(make_config):
    from trainer.preflight import preflight

    cfg = make_config("short", network__type="adalora", network__adalora_tinit=5, network__adalora_tfinal=4,
                      training__max_steps=0, training__epochs=1)  # sample_data: 8 images, batch 1 -> 8 steps
    report = preflight(cfg)
    assert any("must be below the run's 8 steps" in e for e in report.errors), report.errors
    cfg.training.epochs = 2
    assert not any("adalora" in e for e in preflight(cfg).errors)


# ---------------------------------------------------------------------------------------------
# Layer-wise rank from importance


def test_allocate_ranks_gives_more_rank_to_more_gradient_energy_within_the_budget():
    from trainer.networks.importance import allocate_ranks

    steep = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    flat = torch.tensor([1.0, 0.5, 0.25, 0.1, 0.05, 0.01])
    energies = {("unet", "a"): steep, ("unet", "b"): flat, ("unet", "c"): flat * 2}
    costs = {("unet", "a"): 10, ("unet", "b"): 10, ("unet", "c"): 30}
    budget = 2 * sum(costs.values())  # uniform rank 2
    allocation = allocate_ranks(energies, costs, budget, max_rank=5)
    ranks = allocation.ranks
    assert ranks[("unet", "a")] == 5, "the layer with the most energy per parameter gets up to the cap"
    assert ranks[("unet", "a")] > ranks[("unet", "b")] >= 1 and ranks[("unet", "c")] >= 1
    assert allocation.spent == sum(ranks[k] * costs[k] for k in ranks) <= budget
    assert budget - allocation.spent < min(costs.values()), "the budget is spent up to less than one rank's cost"


@pytest.mark.slow  # a real run with the probe (~10 s alone)
def test_importance_run_trains_under_the_budget_and_reports_each_block(make_config):
    from trainer.events import read_events
    from trainer.networks.importance import ALLOCATION_FILE
    from trainer.train import train

    cfg = make_config("importance", network__rank=4, network__rank_allocation="importance", network__importance_probe_steps=2,
                      network__unet_targets="kohya", network__train_text_encoder=True, training__max_steps=4,
                      export__verify=True, export__dtype="fp32")
    assert train(cfg, show_progress=False).status == "completed"
    saved = json.loads((cfg.run_dir / ALLOCATION_FILE).read_text())
    ranks = [r for layers in saved["ranks"].values() for r in layers.values()]
    assert saved["spent"] <= saved["budget"] and len(set(ranks)) > 2, "ranks differ per layer, within the budget"
    events = read_events(cfg.run_dir)
    [report] = [e for e in events if e["type"] == "ranks"]
    assert report["method"] == "importance" and report["total_rank"] == sum(ranks)
    [export] = [e for e in events if e["type"] == "export"]
    assert export["verified"] is True, export["message"]
    header = file_header(cfg.run_dir / f"{cfg.run.name}.safetensors")
    assert header["ss_network_dim"] == "Dynamic" and json.loads(header["lora_studio_rank_per_block"]) == report["blocks"]
    tensors = load_file(str(cfg.run_dir / f"{cfg.run.name}.safetensors"))
    assert sorted(v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")) == sorted(ranks)


def test_a_resumed_importance_run_keeps_its_saved_ranks_without_probing(tmp_path, monkeypatch):
    from trainer.networks import importance
    from trainer.networks.base import LayerPlan
    from trainer.networks.plan import ComponentPlan

    (tmp_path / importance.ALLOCATION_FILE).write_text(json.dumps({"ranks": {"unet": {"x": 7}}, "budget": 80, "spent": 77}))
    monkeypatch.setattr(importance, "probe_energies", lambda *a: pytest.fail("a resumed run must not probe again"))
    probe = type("Probe", (), {"cfg": Config()})()
    plans = {"unet": ComponentPlan(["x"], {"x": LayerPlan(rank=4, alpha=4.0, shape=(6, 4))})}
    allocation = importance.importance_ranks(probe, plans, tmp_path, resume=True)
    assert allocation.ranks == {("unet", "x"): 7} and allocation.spent == 77


@pytest.mark.slow  # a real run (~8 s alone)
def test_vera_run_reports_its_size_beside_loras_and_exports_a_checked_file(make_config):
    from trainer.events import read_events
    from trainer.train import train

    cfg = make_config("vera", network__type="vera", network__rank=16, network__train_text_encoder=True,
                      training__max_steps=3, checkpoint__every_n_steps=2, export__verify=True)
    assert train(cfg, show_progress=False).status == "completed"
    events = read_events(cfg.run_dir)
    [started] = [e for e in events if e["type"] == "started"]
    assert started["trainable_parameters"] * 10 <= started["lora_parameters_same_rank"], started
    kohya = [e for e in events if e["type"] == "export" and e["format"] == "kohya"]
    assert kohya and kohya[-1]["verified"] is True, kohya
    assert (cfg.run_dir / f"{cfg.run.name}_peft" / "unet" / "adapter_config.json").is_file()
