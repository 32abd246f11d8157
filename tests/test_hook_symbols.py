"""The open_clip symbols the hooks replace are checked at registration: a missing one or one with other
parameters fails with one message naming open_clip's version and the symbol."""

from __future__ import annotations

import open_clip
import open_clip.factory
import open_clip.model
import open_clip_train.main as oc_main
import pytest

from fgclep_plugin.model import registry
from fgclep_plugin.train import split_argv
from fgclep_plugin.training import hooks


def test_the_installed_open_clip_passes_every_check():
    registry.register()
    hooks.check_training_symbols()
    with hooks.training_hooks(split_argv([])[0]):
        pass


def test_a_missing_model_symbol_is_named_with_the_open_clip_version(monkeypatch):
    monkeypatch.setattr(registry, "_ORIGINALS", {})  # as in a fresh process: nothing installed yet
    monkeypatch.delattr(open_clip.model, "_build_vision_tower")
    with pytest.raises(RuntimeError) as e:
        registry.register()
    msg = str(e.value)
    assert f"open_clip {open_clip.__version__} is not supported" in msg
    assert "open_clip.model._build_vision_tower does not exist" in msg and "open_clip_torch>=3.3.0,<4" in msg


def test_a_model_symbol_with_other_parameters_is_named(monkeypatch):
    def renamed(model, pretrained=None):  # what a future open_clip might ship
        raise AssertionError("never called")

    monkeypatch.setattr(open_clip.factory, "get_model_config", renamed)
    with pytest.raises(RuntimeError, match=r"open_clip\.factory\.get_model_config takes \(model, pretrained\); "
                       r"the plugin expects \(model_name, \.\.\.\)"):  # fmt: skip
        registry.register()


def test_train_one_epoch_must_take_its_ten_arguments(monkeypatch):
    def nine(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args):
        raise AssertionError("never called")

    monkeypatch.setattr(oc_main, "train_one_epoch", nine)
    before = oc_main.parse_args
    with pytest.raises(RuntimeError) as e, hooks.training_hooks(split_argv([])[0]):
        pass
    msg = str(e.value)
    assert (
        f"open_clip {open_clip.__version__}" in msg and "open_clip_train.main.train_one_epoch takes (" in msg
    )
    assert "tb_writer)" in msg  # the expected list names all ten
    assert oc_main.parse_args is before  # nothing was patched


def test_a_missing_training_symbol_is_named(monkeypatch):
    monkeypatch.delattr(oc_main, "create_loss")
    with pytest.raises(RuntimeError, match=r"open_clip_train\.main\.create_loss does not exist"):
        hooks.check_training_symbols()
