"""Adapters: ssmscope presets on models ssmscope did not build.

    hf      transformers' MambaForCausalLM / MambaModel: roles from parameter names, x_proj's row
            blocks, the user's init as the base, width-generic construction (HFMamba)
    hf_mamba2  transformers' Mamba2ForCausalLM / Mamba2Model: in_proj's five row blocks, HF-style widths
            (N_u = num_heads·head_dim, N_x = state_size), width-generic construction (HFMamba2)
    rescale the part they share: the user's init per role as the base, the plan under a preset, the rescaling,
            the optimizer groups (a fused weight one group with per-row learning rates)
    optim   SGD and Adam/AdamW with per-row learning rates (for fused weights such as x_proj)

Like the rest of ssm, nothing here imports probes or runs; transformers loads only when a model is built.
"""
