"""`m3d-doctor selftest`: the panorama stage's own code path on a tiny FLUX-architecture pipeline with random
weights, built in memory (no download: tokenizers are made with the `tokenizers` library), on the chosen
device. Placement per a plan that streams half the blocks (PartialResidency), the dtype of the device, the
seam wrap (seam metric with wrap must be below without), finite output. Seconds, not minutes.

    <python> -m m3d_doctor.runtime.selftest --device cpu   # one JSON line on stdout; exit 0 pass, 1 fail
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import time
from typing import Any, Optional

import numpy as np
import torch
from m3d_doctor.runtime import pano

WORDS = ["a", "the", "panorama", "of", "mountain", "lake", "sky", "village", "house", "street", "tree", "room"]


def _tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTokenizerFast, T5TokenizerFast

    letters = list(string.ascii_lowercase)
    specials = ["<pad>", "</s>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate([*specials, *letters, *[c + "</w>" for c in letters]])}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    clip = CLIPTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                             unk_token="<unk>", pad_token="<|endoftext|>", model_max_length=77)
    uni = Tokenizer(models.Unigram([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in WORDS],
                                   unk_id=2))
    uni.pre_tokenizer = pre_tokenizers.Whitespace()
    t5 = T5TokenizerFast(tokenizer_object=uni, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                         model_max_length=32, extra_ids=0)
    return clip, len(vocab), t5, len(WORDS) + 3


def build_tiny_pipeline(seed: int = 0):
    """A FluxPipeline of the real classes at toy sizes (4 transformer blocks, 8x VAE, 32-wide encoders)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, clip_vocab, t5_tok, t5_vocab = _tokenizers()
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=clip_vocab, hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                      projection_dim=32, bos_token_id=3, eos_token_id=4, pad_token_id=4))
    te2 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=2,
                                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8],
                        layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=32,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te, tokenizer=clip_tok,
                        text_encoder_2=te2, tokenizer_2=t5_tok, transformer=tr)


def streamed_plan(pipe) -> dict[str, Any]:
    """A `partial` plan streaming half the blocks, chosen the way the planner chooses them."""
    from m3d_doctor.planner import Plan, choose_streamed

    tr = pipe.transformer
    blocks = [b for name in pano.BLOCK_LISTS for b in getattr(tr, name)]
    sizes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
    idx = choose_streamed(sizes, len(blocks) // 2)
    return Plan("partial", True, streamed_blocks=len(idx), resident_blocks=len(blocks) - len(idx),
                streamed_indices=idx).to_dict()


def run(device: torch.device, height: int = 64, width: int = 256, steps: int = 4, seed: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    pipe = build_tiny_pipeline(seed)
    dtype = pano.dtype_for(device)
    pipe.to(dtype=dtype)  # dtype only: placement stays per plan below
    plan = streamed_plan(pipe)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pano.place(pipe, plan, device)
    kw = dict(height=height, width=width, steps=steps, seed=seed, max_seq=32)
    t1 = time.perf_counter()
    on = pano.generate(pipe, "a panorama of a lake", device, plan, wrap=True, **kw)
    off = pano.generate(pipe, "a panorama of a lake", device, plan, wrap=False, **kw)
    seam_on, seam_off = pano.seam_metric(on), pano.seam_metric(off)
    finite = bool(np.isfinite(on).all() and np.isfinite(off).all())
    res = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "plan_mode": plan["mode"],
           "streamed_indices": plan["streamed_indices"], "shape": list(on.shape), "finite": finite,
           "seam_wrap": round(seam_on, 4), "seam_nowrap": round(seam_off, 4),
           "wrap_ok": seam_on < seam_off, "generate_s": round(time.perf_counter() - t1, 3),
           "total_s": round(time.perf_counter() - t0, 3), "peak_bytes": pano.peak_bytes(device),
           "torch": torch.__version__}
    import diffusers

    res["diffusers"] = diffusers.__version__
    res["ok"] = finite and res["wrap_ok"]
    return res


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="m3d_doctor.runtime.selftest")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    name = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "--device cuda: torch sees no CUDA device"}))
        return 1
    try:
        res = run(torch.device(name))
    except Exception as exc:  # a failing stack is a selftest failure, reported as one line
        res = {"ok": False, "device": name, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(res), flush=True)
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
