"""Adapters: ssmscope presets on models ssmscope did not build.

    hf      transformers' MambaForCausalLM / MambaModel: roles from parameter names, x_proj's row
            blocks, the user's init as the base, width-generic construction (HFMamba)
    optim   SGD and Adam/AdamW with per-row learning rates (for fused weights such as x_proj)

Like the rest of ssm, nothing here imports probes or runs; transformers loads only when a model is built.
"""
