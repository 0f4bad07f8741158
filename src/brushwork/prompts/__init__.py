"""Prompt syntax as AUTOMATIC1111 users write it: pure functions, no torch."""
from .parser import (
    BREAK_WEIGHT,
    ExtraNetwork,
    extract_extra_networks,
    parse_attention,
    schedule_prompt,
    split_and,
)

__all__ = ["BREAK_WEIGHT", "ExtraNetwork", "extract_extra_networks", "parse_attention", "schedule_prompt", "split_and"]
