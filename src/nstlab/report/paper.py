"""The paper's published numbers (docs/methods.md#paper-results): shown only in their own,
labelled `paper_reported_*` columns, never as nstlab's."""

# docs/methods.md#paper-results, the paper's Table 1 (content / style loss on its 352 test pairs).
PAPER_TABLE1 = {
    "vit_lora": (9.097, 1.514),
    "artflow": (9.200, 2.745),
    "iest": (9.206, 2.805),
    "mcc": (9.204, 2.945),
    "sanet": (9.687, 2.535),
}


# The paper's Table 2: its configurations, by the values of TABLE2_AXES in order -> (content, style).
PAPER_TABLE2 = {
    (16, "qv", 6, 3): (9.134, 1.533),
    (32, "qv", 6, 3): (9.113, 1.544),
    (16, "qkv", 6, 3): (9.128, 1.480),
    (16, "qv", 6, 4): (9.192, 1.473),
    (16, "qv", 8, 3): (9.171, 1.559),
    (16, "qv", 4, 3): (9.119, 1.548),
    (16, "qkvd", 6, 3): (9.100, 1.514),
    (64, "qv", 6, 3): (9.183, 1.555),
}
