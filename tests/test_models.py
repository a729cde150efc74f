def test_tiny_keys_left_out_take_the_schema_defaults():
    from crosstrace.config import model_defaults, validated

    cfg = validated({"models": {"m": {"tiny": {"arch": "gpt_neox", "layers": 1, "hidden": 8,
                                               "heads": 2, "intermediate": 8}}},
                     "analysis": {"k_percent": [5]}})  # fmt: skip
    tiny = cfg["models"]["m"]["tiny"]
    assert tiny["max_position"] == model_defaults("tiny")["max_position"]
    assert tiny["rotary_pct"] == model_defaults("tiny")["rotary_pct"]
