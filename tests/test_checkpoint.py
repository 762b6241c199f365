"""Pickle-free checkpoints: round trips of nested training state, and files that are not what
they claim to be are errors naming the checkpoint, never code that runs."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest
import torch

from pipeline.checkpoint import STATE_FILE, TENSORS_FILE, CheckpointError, load_state, save_state


class WritesMarker:
    """Unpickling this runs ``open(marker, "w")``: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_nested_state_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"epoch": 2, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": {"torch": torch.get_rng_state()}, "history": [{"loss": float("nan")}],
             "betas": (0.9, 0.999), "none": None, "flag": True}
    save_state(state, tmp_path / "last")
    loaded = load_state(tmp_path / "last")
    assert loaded["epoch"] == 2 and loaded["none"] is None and loaded["flag"] is True
    assert loaded["betas"] == [0.9, 0.999] and math.isnan(loaded["history"][0]["loss"])
    torch.testing.assert_close(loaded["rng"]["torch"], state["rng"]["torch"], rtol=0, atol=0)
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])  # int-keyed per-parameter state survives
    for key, value in optimizer.state_dict()["state"][0].items():
        torch.testing.assert_close(restored.state_dict()["state"][0][key], value)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor)


def test_objects_that_would_need_pickle_are_refused(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_state({"obj": object()}, tmp_path / "last")
    assert not (tmp_path / "last").exists()


def test_a_pickle_in_place_of_the_tensors_is_never_run(tmp_path):
    save_state({"x": torch.ones(2)}, tmp_path / "last")
    marker = tmp_path / "pwned"
    (tmp_path / "last" / TENSORS_FILE).write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(CheckpointError, match=r"tensors.safetensors: unreadable .*delete"):
        load_state(tmp_path / "last")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate tensors", "state not json", "no state"])
def test_damaged_checkpoints_are_errors_naming_them(tmp_path, damage):
    last = tmp_path / "last"
    save_state({"x": torch.arange(1000.0)}, last)
    if damage == "truncate tensors":
        data = (last / TENSORS_FILE).read_bytes()
        (last / TENSORS_FILE).write_bytes(data[:len(data) // 2])
    elif damage == "state not json":
        (last / STATE_FILE).write_text('{"x": {"__tensor__": ')
    else:
        os.remove(last / STATE_FILE)
    with pytest.raises(CheckpointError) as info:
        load_state(last)
    message = str(info.value)
    damaged = TENSORS_FILE if damage == "truncate tensors" else STATE_FILE
    assert message.startswith(f"{last / damaged}: ") and f"delete {last} to start" in message
    assert "\n" not in message


def test_a_missing_tensor_is_named(tmp_path):
    save_state({"x": torch.ones(1)}, tmp_path / "last")
    (tmp_path / "last" / STATE_FILE).write_text(json.dumps({"x": {"__tensor__": "/y"}}))
    with pytest.raises(CheckpointError, match="tensor '/y' is missing"):
        load_state(tmp_path / "last")
