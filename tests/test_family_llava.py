"""LLaVA-1.5 end to end on the session's tiny LLaVA: eval, tune (linear and LoRA), serve by name, tailor."""
from __future__ import annotations

from family_checks import check_family


def test_llava_end_to_end(ray_session, tiny_model, tmp_path):
    check_family(tiny_model, tmp_path)
