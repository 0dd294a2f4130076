"""The reference program's `nexus:` settings become the Lab's arguments as they are."""

from __future__ import annotations

from nexus_components.lab_settings import lab_arguments

HOST_KEYWORDS = ("guest", "image", "network", "paths", "vm")


def test_each_section_the_lab_takes_goes_to_it_and_the_rest_comes_back() -> None:
    settings = {
        "vm": {"memoryMiB": 2048, "cpus": 2, "accelerator": "tcg"},
        "network": {"sshPort": 2222, "forwards": [{"host": 8080, "guest": 80}]},
        "guest": {"userData": {"memoryMiB": "a user's own key, left as it is"}},
        "playground": {"enabled": False},
        "innerVm": {"memoryMiB": 512},
    }
    arguments, left = lab_arguments(settings, HOST_KEYWORDS)
    assert arguments == {
        "vm": {"memoryMib": 2048, "cpus": 2, "accelerator": "tcg"},
        "network": {"sshPort": 2222, "forwards": [{"host": 8080, "guest": 80}]},
        "guest": {"userData": {"memoryMiB": "a user's own key, left as it is"}},
    }
    assert left == {"playground": {"enabled": False}, "innerVm": {"memoryMiB": 512}}


def test_once_the_lab_takes_the_guest_sections_every_key_goes_to_it() -> None:
    settings = {"playground": {"enabled": False}, "innerVm": {"memoryMiB": 512}}
    arguments, left = lab_arguments(settings, (*HOST_KEYWORDS, "playground", "inner_vm"))
    assert arguments == {"playground": {"enabled": False}, "inner_vm": {"memoryMib": 512}}
    assert left == {}
