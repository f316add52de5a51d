"""Truncated or foreign checkpoints and weight files give errors naming the file and what was expected."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from agents import AGENTS
from diffusion_gym.checkpoints import load_checkpoint, load_weights, read_metadata
from diffusion_gym.tasks.digits import WEIGHTS_DIR as DIGITS_WEIGHTS
from diffusion_gym.tasks.digits.classifier import load_classifier
from diffusion_gym.tasks.mixture2d import WEIGHTS_DIR
from diffusion_gym.tasks.mixture2d.env import make_vector_env
from diffusion_gym.tasks.mixture2d.rewards import WEIGHTS_NAME, load_proxy

pytestmark = pytest.mark.filterwarnings("ignore:Euler-Maruyama step:UserWarning")


def tiny_agent():
    agent_cls, config_cls = AGENTS["ct_ppo"]
    return agent_cls(make_vector_env(4, n_steps=3, integrator="exponential"), config_cls(progress=False))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "agent.pt"
    tiny_agent().save(path)
    return path


def test_agent_checkpoint_round_trip(checkpoint):
    agent = tiny_agent().load(checkpoint)
    assert agent.iteration == 0 and agent.reward_queries == 0


def test_truncated_agent_checkpoint_names_the_file(checkpoint, tmp_path):
    cut = tmp_path / "cut.pt"
    data = checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is not a readable ct_ppo agent checkpoint \(truncated") as info:
        tiny_agent().load(cut)
    assert info.value.__cause__ is not None  # torch's own message is kept as the cause


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_are_not_a_checkpoint(tmp_path, seed):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ValueError, match=r"junk\.pt is not a readable ct_ppo agent checkpoint"):
        tiny_agent().load(junk)


def test_a_dict_of_another_kind_names_the_missing_keys(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"foo": 1}, other)
    missing = r"other\.pt is not a ct_ppo agent checkpoint: it lacks the keys \['agent', 'config', 'modules'\]"
    with pytest.raises(ValueError, match=missing):
        tiny_agent().load(other)
    torch.save(torch.zeros(3), other)
    with pytest.raises(ValueError, match=r"other\.pt holds a Tensor, not a model checkpoint"):
        load_checkpoint(other, "model checkpoint")


def test_another_agents_checkpoint_keeps_its_error(checkpoint):
    ddpo_cls, ddpo_cfg = AGENTS["ddpo"]
    with pytest.raises(ValueError, match="checkpoint of a ct_ppo agent, not ddpo"):
        ddpo_cls(make_vector_env(4, n_steps=3, integrator="exponential"), ddpo_cfg(progress=False)).load(checkpoint)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ct_ppo agent checkpoint at .*absent\.pt"):
        tiny_agent().load(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        load_weights(tmp_path / "absent.safetensors", "a model")
    with pytest.raises(FileNotFoundError, match=r"mixture2d_proxy\.json not found"):
        load_proxy(directory=tmp_path)


@pytest.fixture
def proxy_copy(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(WEIGHTS_DIR / f"{WEIGHTS_NAME}{suffix}", tmp_path)
    return tmp_path / f"{WEIGHTS_NAME}.safetensors"


def test_shipped_weights_round_trip(proxy_copy):
    copy, shipped = load_proxy(directory=proxy_copy.parent), load_proxy()
    for a, b in zip(copy.state_dict().values(), shipped.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_truncated_safetensors_names_the_file(proxy_copy):
    data = proxy_copy.read_bytes()
    proxy_copy.write_bytes(data[: len(data) // 2])
    message = re.escape(f"{proxy_copy} is not readable") + r".*safetensors weights of the mixture2d proxy"
    with pytest.raises(ValueError, match=message) as info:
        load_proxy(directory=proxy_copy.parent)
    assert info.value.__cause__ is not None


def test_weights_of_another_model_name_the_file(proxy_copy, tmp_path):
    """The mixture2d proxy's weights where the digits classifier's belong: a mismatch, not torch's RuntimeError."""
    target = tmp_path / "classifier"
    target.mkdir()
    shutil.copy(proxy_copy, target / "digits_classifier.safetensors")
    shutil.copy(DIGITS_WEIGHTS / "digits_classifier.json", target)
    with pytest.raises(ValueError, match=r"digits_classifier\.safetensors does not hold the weights of the digits"):
        load_classifier(target)


def test_foreign_metadata_names_the_missing_keys(proxy_copy):
    proxy_copy.with_suffix(".json").write_text(json.dumps({"metrics": {}}))
    missing = r"mixture2d_proxy\.json is not the JSON metadata of the mixture2d proxy: it lacks the keys \['config'\]"
    with pytest.raises(ValueError, match=missing):
        load_proxy(directory=proxy_copy.parent)
    proxy_copy.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match=r"is not the JSON metadata"):
        read_metadata(proxy_copy, "the mixture2d proxy")
