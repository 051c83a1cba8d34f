import pytest
import yaml

from mathtune.config import Config, apply_overrides, config_hash, diff_keys, load_config, parse_override
from mathtune.errors import MathtuneError

from conftest import ROOT


def test_defaults_are_the_reference_study():
    cfg = Config()
    assert cfg.model.name == "google/gemma-2-9b"
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.train.grad_accum) == (3, 2e-4, 1)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.bias) == (8, 16, 0.1, "none")
    assert cfg.train.early_stopping_patience == 5
    assert cfg.data.val_fraction == 0.1 and cfg.data.seed == 42


@pytest.mark.parametrize("name", ["demo-cpu", "demo-gemma3-cpu", "gemma2-9b-gsm8k", "tiny"])
def test_shipped_configs_load(name):
    load_config(ROOT / "configs" / f"{name}.yaml")


def test_reference_config_matches_the_study():
    cfg = load_config(ROOT / "configs" / "gemma2-9b-gsm8k.yaml")
    assert cfg.model.name == "google/gemma-2-9b" and cfg.model.attn_implementation == "eager"
    assert (cfg.data.source, cfg.data.hub_id, cfg.data.hub_config) == ("hub", "openai/gsm8k", "main")
    assert cfg.model.dtype == "bfloat16" and cfg.train.bf16
    assert cfg.eval.limit is None
    assert cfg.lora.target_modules == "all-linear"


def test_overrides_parse_yaml_values():
    assert parse_override("train.learning_rate=1e-4") == (["train", "learning_rate"], 1e-4)
    assert parse_override("eval.limit=null") == (["eval", "limit"], None)
    assert parse_override("model.name=a=b") == (["model", "name"], "a=b")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.epochs=2", "lora.r=16", "eval.base=false"])
    assert cfg.train.epochs == 2 and cfg.lora.r == 16 and cfg.eval.base is False


@pytest.mark.parametrize(
    "override, key",
    [
        ("lora.r=0", "lora.r"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.learning_rate=-1e-4", "train.learning_rate"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=abc", "train.epochs"),
        ("lora.bias=some", "lora.bias"),
        ("train.lr=1", "train.lr"),
        ("nosuch.key=1", "nosuch"),
        ("eval.limit=-3", "eval.limit"),
        ("model.plain_template=no placeholder", "model.plain_template"),
        ("train.rows_per_forward=3", "train.rows_per_forward"),  # tiny.yaml's batch is 4
        (["train.batching=packed", "model.attn_implementation=eager"], "train.batching"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(MathtuneError) as e:
        load_config(ROOT / "configs" / "tiny.yaml", override if isinstance(override, list) else [override])
    assert key in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 1\n  learnin_rate: 0.1\n")
    with pytest.raises(MathtuneError, match=r"train\.learnin_rate: unknown key"):
        load_config(p)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: [1\n")
    with pytest.raises(MathtuneError, match="YAML syntax error"):
        load_config(p)


def test_missing_file():
    with pytest.raises(MathtuneError, match="config file not found"):
        load_config("nope.yaml")


def test_jsonl_source_needs_a_path():
    with pytest.raises(MathtuneError, match="data.path"):
        load_config(None, ["data.source=jsonl"])


def test_gsm_symbolic_needs_a_test_source():
    with pytest.raises(MathtuneError, match="data.test_source"):
        load_config(None, ["data.source=gsm_symbolic"])


def test_override_into_a_value_is_an_error():
    with pytest.raises(MathtuneError, match="not a section"):
        apply_overrides({"train": 3}, ["train.epochs=1"])


def test_hash_and_diff():
    a = load_config(ROOT / "configs" / "tiny.yaml")
    b = load_config(ROOT / "configs" / "tiny.yaml", ["lora.r=16"])
    assert config_hash(a) != config_hash(b)
    assert diff_keys(a, b) == ["lora.r"]
    # The resolved config round-trips through YAML.
    assert Config.model_validate(yaml.safe_load(yaml.safe_dump(a.model_dump(mode="json")))) == a
