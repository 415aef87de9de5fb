"""The native video stage against a REAL Matrix-3D checkout, with tiny random Wan-architecture models.

    <python with torch, torchvision, transformers, safetensors, opencv, imageio(-ffmpeg), einops>
        benchmarks/video_upstream_tiny.py --root /path/to/Matrix-3D --work /tmp/vt [--device cpu|cuda]

Builds, with the checkout's own classes (random weights, seeded): a 2-block `WanModel` (dim 256, head_dim 128
like the real one, in_dim 36, image input), a 2-layer `WanTextEncoder`, the real-size `WanImageEncoder` and
`WanVideoVAE`, a tiny umT5-style tokenizer (the `tokenizers` library), and a PEFT LoRA on every block's
attention and FFN. Files are written in upstream's layout: the DiT as 7 fp32 safetensors shards (a block
straddles two), T5 bf16 `.pth`, CLIP/VAE fp32 `.pth`. Upstream's loader tables know only the real models'
key hashes, so this harness (never the product) registers the tiny ones in the checkout's
`model_loader_configs` and `WanModelStateDictConverter`.

Then it runs, on the same synthetic condition videos, (a) upstream's own flow — `ModelManager.load_models`,
`load_lora`, `from_model_manager`, `enable_vram_management(None)`, `pipe(...)` — and (b) the native stage's
`generate` with one block streamed through PartialResidency, and prints one JSON line: whether the frames are
bit-identical, the phases the native stage saw, and timings. Conditioning (MoGe, nvdiffrast) is not run here:
it needs CUDA-compiled nvdiffrast and MoGe weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

TINY_DIT = dict(dim=256, in_dim=36, ffn_dim=512, out_dim=16, text_dim=64, freq_dim=256, eps=1e-6,
                patch_size=(1, 2, 2), num_heads=2, num_layers=2, has_image_input=True)
TINY_T5 = dict(vocab=1000, dim=64, dim_attn=64, dim_ffn=128, num_heads=2, num_layers=2, num_buckets=32)
WORDS = ["a", "the", "panorama", "of", "lake", "sky", "video", "is", "high", "quality", "view", "clear", "not",
         "low", "resolution", "distortion", "strange", "artifacts", "masterpiece", "best", "highres", "and",
         "ultra-detailed", "fantastic", "it", "has", "very", "mountain"]


def tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    uni = Tokenizer(models.Unigram([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in WORDS],
                                   unk_id=2))
    uni.pre_tokenizer = pre_tokenizers.Whitespace()
    T5TokenizerFast(tokenizer_object=uni, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                    model_max_length=512, extra_ids=0).save_pretrained(str(folder))


def _teach(ds, converter: type, digest: str, config: dict) -> None:
    """Make upstream's state-dict converter return `config` for the tiny model's key hash (harness only)."""
    orig = converter.from_civitai

    def from_civitai(self, state_dict):
        if ds.hash_state_dict_keys(state_dict) == digest:
            return state_dict, dict(config)
        return orig(self, state_dict)

    converter.from_civitai = from_civitai


def build(root: Path, work: Path, resolution: int) -> dict:
    from m3d_doctor import upstream
    from m3d_doctor.runtime import video
    from safetensors.torch import save_file

    ds = video.import_diffsynth(root)
    from diffsynth.models.wan_video_dit import WanModel, WanModelStateDictConverter
    from diffsynth.models.wan_video_image_encoder import WanImageEncoder
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE

    torch.manual_seed(0)
    mdir = work / upstream.VIDEO_MODEL_DIR[resolution]
    mdir.mkdir(parents=True, exist_ok=True)
    dit = WanModel(**TINY_DIT)
    for p in dit.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    sd = {k: v.float().contiguous() for k, v in dit.state_dict().items()}
    keys = list(sd)
    for i, chunk in enumerate(np.array_split(np.arange(len(keys)), 7)):
        save_file({keys[j]: sd[keys[j]] for j in chunk}, str(mdir / upstream.VIDEO_SHARDS[i]))
    t5 = WanTextEncoder(**TINY_T5)
    torch.save({k: v.to(torch.bfloat16) for k, v in t5.state_dict().items()}, mdir / upstream.VIDEO_T5)
    clip = WanImageEncoder()
    torch.save({k[len("model."):]: v.float() for k, v in clip.state_dict().items()}, mdir / upstream.VIDEO_CLIP)
    vae = WanVideoVAE(z_dim=16)
    torch.save({k[len("model."):]: v.float() for k, v in vae.state_dict().items()}, mdir / upstream.VIDEO_VAE)
    tokenizer(mdir / upstream.VIDEO_TOKENIZER)
    lora = {}
    g = torch.Generator().manual_seed(1)
    for name, p in dit.named_parameters():
        if name.startswith("blocks.") and p.ndim == 2 and any(t in name for t in ("attn.q.", "attn.k.", "attn.v.",
                                                                                  "attn.o.", "ffn.0.", "ffn.2.")):
            base = name[: -len(".weight")]
            lora[f"{base}.lora_A.default.weight"] = (torch.randn(4, p.shape[1], generator=g) * 0.05).to(torch.bfloat16)
            lora[f"{base}.lora_B.default.weight"] = (torch.randn(p.shape[0], 4, generator=g) * 0.05).to(torch.bfloat16)
    lpath = work / upstream.VIDEO_LORA[resolution]
    lpath.parent.mkdir(parents=True, exist_ok=True)
    torch.save(lora, lpath)
    (work / upstream.MOGE_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, work / upstream.MOGE_CHECKPOINT)
    # the tiny models' key hashes, registered where upstream's loader looks them up (harness only)
    tiny = {}
    for name, cls, state in (("wan_video_dit", WanModel, sd),
                             ("wan_video_text_encoder", WanTextEncoder, torch.load(mdir / upstream.VIDEO_T5)),
                             ("wan_video_image_encoder", WanImageEncoder, torch.load(mdir / upstream.VIDEO_CLIP)),
                             ("wan_video_vae", WanVideoVAE, torch.load(mdir / upstream.VIDEO_VAE))):
        digest = ds.hash_state_dict_keys(state, with_shape=True)
        tiny[name] = digest
        ds.configs.append((None, digest, [name], [cls], "civitai"))
    from diffsynth.models.wan_video_text_encoder import WanTextEncoderStateDictConverter

    _teach(ds, WanModelStateDictConverter, tiny["wan_video_dit"], TINY_DIT)
    _teach(ds, WanTextEncoderStateDictConverter, tiny["wan_video_text_encoder"], TINY_T5)
    return {"hashes": tiny, "model_dir": str(mdir), "lora": str(lpath)}


def condition_files(case: Path, frames: int, w: int, h: int) -> None:
    """Synthetic condition videos in upstream's format (mp4v, 12 fps), cameras.npz and the prompt."""
    from m3d_doctor.runtime import video

    rng = np.random.default_rng(0)
    cond = case / "condition"
    cond.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, (h * 2, w * 2, 3), dtype=np.uint8)
    rgb = [np.roll(base, 4 * t, axis=1) for t in range(frames)]
    mask = [np.where((np.arange(w * 2) < w * 2 - 8 * t)[None, :, None], 255, 0).repeat(h * 2, 0).repeat(3, 2)
            .astype(np.uint8) for t in range(frames)]
    video.write_video(rgb, cond / "rendered_rgb.mp4", 12)
    video.write_video(mask, cond / "rendered_mask.mp4", 12)
    np.savez(cond / "cameras.npz", np.tile(np.eye(4), (frames, 1, 1)))
    (case / "prompt.txt").write_text("a panorama of a lake", encoding="utf-8")


def run_upstream(ds, inputs, case: Path, device: str, seed: int, steps: int, frames: int, w: int, h: int):
    """Upstream L280-338 as written (one process, no torchrun): the baseline."""
    from m3d_doctor.runtime import video

    mm = ds.ModelManager(torch_dtype=torch.bfloat16, device="cpu")
    mm.load_models([str(inputs.clip)], torch_dtype=torch.float32)
    mm.load_models([[str(s) for s in inputs.shards], str(inputs.t5), str(inputs.vae)])
    mm.load_lora(str(inputs.lora), lora_alpha=1.0)
    pipe = ds.WanVideoPipeline.from_model_manager(mm, device=device, use_usp=False)
    pipe.enable_vram_management(num_persistent_param_in_dit=None)
    prompt = (case / "prompt.txt").read_text()
    cv, cm = video.condition_arrays(inputs.root, case, prompt, w, h, frames)
    out = pipe(prompt=prompt + video.PROMPT_SUFFIX, negative_prompt=video.NEGATIVE_PROMPT, cfg_scale=5.0,
               num_frames=frames, num_inference_steps=steps, seed=seed, tiled=True, height=h, width=w,
               cond_video=cv, cond_mask=cm)
    return np.stack([np.asarray(f) for f in out])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=480)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", default="192x96")
    a = ap.parse_args()
    from m3d_doctor.runtime import video
    from m3d_doctor.upstream import VideoInputs, video_version

    root, work = Path(a.root).resolve(), Path(a.work).resolve()
    w, h = (int(x) for x in a.size.split("x"))
    t0 = time.perf_counter()
    built = build(root, work, a.resolution)
    inputs = VideoInputs.in_checkout(root, a.resolution, model_dir=Path(built["model_dir"]))
    inputs = VideoInputs(root, a.resolution, inputs.shards, inputs.t5, inputs.clip, inputs.vae, inputs.tokenizer,
                         Path(built["lora"]), work / "checkpoints/moge/model.pt")
    problems = inputs.problems()
    case = work / "case"
    condition_files(case, a.frames, w, h)
    t1 = time.perf_counter()
    ds = video.import_diffsynth(root)
    ref = run_upstream(ds, inputs, case, a.device, 0, a.steps, a.frames, w, h)
    t2 = time.perf_counter()
    video.ROPE_CHUNK = 64  # the 216-token tiny sequence goes through the sliced RoPE too
    frames_p, res = video.denoise_video(inputs, case, {"mode": "partial", "streamed_indices": [1]},
                                        torch.device(a.device), 0, a.steps, a.frames, (w, h))
    t3 = time.perf_counter()
    video.write_outputs(case, frames_p)
    frames_r, res_r = video.denoise_video(inputs, case, {"mode": "resident", "streamed_indices": []},
                                          torch.device(a.device), 0, a.steps, a.frames, (w, h))
    p_np = np.stack([np.asarray(f) for f in frames_p])
    r_np = np.stack([np.asarray(f) for f in frames_r])
    outputs = {f: (case / f).is_file() for f in ("generated/generated.mp4", "pano_video.mp4", "pano_video_cam.json")}
    print(json.dumps({"upstream_version": video_version(root), "problems": problems, "hashes": built["hashes"],
                      "outputs": outputs, "native_partial": res, "native_resident_phases": res_r["phase_seconds"],
                      "upstream_frame_mean": round(float(ref.mean()), 4),
                      "bit_identical": {"partial_vs_upstream": bool(np.array_equal(p_np, ref)),
                                        "resident_vs_upstream": bool(np.array_equal(r_np, ref))},
                      "max_abs_diff_partial": int(np.abs(p_np.astype(int) - ref.astype(int)).max()),
                      "seconds": {"build": round(t1 - t0, 1), "upstream": round(t2 - t1, 1),
                                  "native_partial": round(t3 - t2, 1)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
