"""VL-JEPA-style language head on the frozen encoder: captions from simulator state,
a frozen text encoder, the head itself, retrieval/selective decoding, and language goals
for the planner. See docs/language.md."""
