"""Text-to-image pieces around LightGen's MAR transformer: the T5 text encoder and the SD3.5 VAE.

Thin loaders over transformers / diffusers, written for gtr-bench from the facts of the official code
(fact: XianfengWu01/LightGen scripts/geneval.py, models/utils.py T5_Embedding,
scripts/pipeline_image.py):
    text   google/flan-t5-xxl, T5Tokenizer + T5EncoderModel, prompts padded to 128 tokens; all 128
           positions of `last_hidden_state` (B, 128, 4096) go to the transformer, padding included
    image  SD3.5's 16-channel VAE; latents (B, 16, H/8, W/8) decoded as
           vae.decode(z / scaling_factor + shift_factor), then [-1, 1] -> uint8 RGB
Nothing here downloads silently when offline: a missing or damaged model raises
`gtr.checkpoints.CheckpointError` with one sentence saying what to fetch and where to pass it.
"""
import os

import torch

from gtr.checkpoints import CheckpointError, hub_offline

T5_HUB_ID = "google/flan-t5-xxl"  # fact: XianfengWu01/LightGen scripts/geneval.py
SD35_HUB_ID = "stabilityai/stable-diffusion-3.5-large"  # fact: XianfengWu01/LightGen scripts/geneval.py
T5_MAX_LENGTH = 128  # fact: XianfengWu01/LightGen models/utils.py T5_Embedding

# google/flan-t5-xxl config.json (encoder side; used only to count FLOPs on the meta device).
T5_XXL_CONFIG = dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24, vocab_size=32128,
                     feed_forward_proj="gated-gelu")
# Parameters of T5EncoderModel(T5_XXL_CONFIG), counted on the meta device (shared embedding included).
T5_XXL_ENCODER_PARAMS = 4_762_310_656

# stabilityai/stable-diffusion-3.5-large vae/config.json.
SD35_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                       up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                       layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                       scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                       use_post_quant_conv=False, force_upcast=True)
# Parameters of AutoencoderKL(**SD35_VAE_CONFIG) (encoder 34,274,208 + decoder 49,545,475), counted on the
# meta device (~168 MB of weights in fp16); a check that the config above is transcribed right.
SD35_VAE_PARAMS = 83_819_683


def _cause(e):
    """First line of an exception, short enough for a one-sentence error."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}"


def _looks_like_path(source):
    """A hub id is `name` or `owner/name`; anything else (absolute, ./, deeper) is meant as a folder."""
    return os.path.isabs(source) or source.startswith(".") or source.count("/") > 1 or "\\" in source


def _load(what, source, load_fn, fix):
    """Run load_fn(local_files_only) on a folder, or on a hub id (cache first, then the hub unless offline).

    Any failure becomes a CheckpointError naming `what`, the source, the cause and `fix`.
    """
    source = os.path.expanduser(str(source))
    if os.path.isdir(source):
        try:
            return load_fn(source, True)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot load the {what} from folder {source} ({_cause(e)}); the files are "
                                  f"missing or damaged: {fix}") from None
    if _looks_like_path(source):
        raise CheckpointError(f"the {what} folder {source} does not exist: {fix}")
    try:  # a hub id: a copy already in the HF cache needs no network
        return load_fn(source, True)
    except Exception as cached_error:
        if hub_offline():
            raise CheckpointError(f"the {what} {source} is neither a folder here nor in the Hugging Face cache, "
                                  f"and the hub is off "
                                  f"(HF_HUB_OFFLINE) ({_cause(cached_error)}): {fix}") from None
    try:
        return load_fn(source, False)
    except Exception as e:
        raise CheckpointError(f"{source} is not a folder here and the {what} could not be fetched from the "
                              f"Hugging Face hub ({_cause(e)}); "
                              f"set HF_HUB_OFFLINE=1 to skip the hub when there is no network: {fix}") from None


class TextEncoder:
    """Frozen T5 encoder with its tokenizer: prompts -> (B, max_length, d_model) hidden states."""

    def __init__(self, tokenizer, model, max_length=T5_MAX_LENGTH):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = int(max_length)
        self.dim = model.config.d_model

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts):
        """Hidden states (B, max_length, dim) of `prompts` (a list of str), on the encoder's device.

        Every prompt is padded / truncated to exactly max_length tokens and all positions are returned,
        padding included; the attention mask only acts inside the encoder.
        # fact: XianfengWu01/LightGen models/utils.py T5_Embedding
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ValueError(f"encode expects a list of prompt strings, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("encode got an empty list of prompts; pass at least one string")
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"encode expects every prompt to be a str, got {bad[0]}")
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                                return_attention_mask=True, return_tensors="pt")
        device = self.device
        out = self.model(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        return out.last_hidden_state


def load_text_encoder(source=T5_HUB_ID, max_length=T5_MAX_LENGTH, device="cpu", dtype=torch.float32):
    """Load a frozen T5 text encoder and its tokenizer as a TextEncoder.

    source: a local folder holding the tokenizer files (tokenizer.json and/or spiece.model) and the T5
    weights (an encoder-only save or a full T5ForConditionalGeneration, like the google/flan-t5-xxl repo),
    or a hub repo id. A folder is read with local_files_only=True; a hub id is read from the HF cache
    first, then from the hub unless HF_HUB_OFFLINE is set. Failures raise CheckpointError.
    """
    from transformers import T5EncoderModel, T5Tokenizer
    fix = (f"download {T5_HUB_ID} on a connected machine (hf download {T5_HUB_ID} --local-dir PATH) "
           "and pass model.text_encoder=PATH")

    def load(src, local_only):
        if local_only and os.path.isdir(src):
            have = set(os.listdir(src))
            if "config.json" not in have:
                raise CheckpointError(f"the text encoder folder {src} has no config.json: {fix}")
            if not have & {"tokenizer.json", "spiece.model"}:
                raise CheckpointError(f"the text encoder folder {src} has no tokenizer (tokenizer.json or "
                                      f"spiece.model): {fix}")
        tokenizer = T5Tokenizer.from_pretrained(src, local_files_only=local_only)  # fact: LightGen T5_Embedding
        model = T5EncoderModel.from_pretrained(src, local_files_only=local_only, dtype=dtype)
        return tokenizer, model

    tokenizer, model = _load("text encoder", source, load, fix)
    return TextEncoder(tokenizer, model.to(device), max_length=max_length)


def build_t5_encoder(config=T5_XXL_CONFIG, device="meta"):
    """A T5EncoderModel of `config` without trained weights (on the meta device: for counting FLOPs)."""
    from transformers import T5Config, T5EncoderModel
    with torch.device(device):
        return T5EncoderModel(T5Config(**config)).eval()


def load_sd_vae(source=SD35_HUB_ID, device="cpu", dtype=torch.float32, latent_channels=16):
    """Load SD3.5's VAE (diffusers AutoencoderKL) in eval mode.

    source: a folder holding `vae/` (the SD3.5 repo layout, as the official code reads it), a folder
    that is the vae folder itself (has config.json), or a hub id (its `vae` subfolder).
    A VAE whose latent_channels differs from `latent_channels` (e.g. an SD1/SDXL 4-channel VAE) is
    refused with CheckpointError, as are missing or damaged files.
    # fact: XianfengWu01/LightGen scripts/geneval.py (os.path.join(path, "vae"))
    """
    from diffusers import AutoencoderKL
    fix = (f"download the vae/ folder of {SD35_HUB_ID} on a connected machine (accept its licence on the hub; "
           f"hf download {SD35_HUB_ID} --include 'vae/*' --local-dir PATH) and pass model.vae_checkpoint=PATH")

    def load(src, local_only):
        subfolder = "vae"
        if local_only and os.path.isdir(src):
            if os.path.isfile(os.path.join(src, "vae", "config.json")):
                subfolder = "vae"
            elif os.path.isfile(os.path.join(src, "config.json")):
                subfolder = None
            else:
                raise CheckpointError(f"the VAE folder {src} has neither vae/config.json nor config.json: {fix}")
        return AutoencoderKL.from_pretrained(src, subfolder=subfolder, local_files_only=local_only,
                                             torch_dtype=dtype)

    vae = _load("VAE", source, load, fix)
    got = vae.config.latent_channels
    if got != latent_channels:
        raise CheckpointError(f"the VAE from {source} has {got} latent channels but {latent_channels} are "
                              f"expected (LightGen decodes with SD3.5's 16-channel VAE, not an SD1/SDXL one): {fix}")
    return vae.to(device).eval().requires_grad_(False)


def build_sd_vae(device="meta", config=SD35_VAE_CONFIG):
    """SD3.5's VAE architecture without trained weights (on the meta device: for counting FLOPs).

    diffusers' AutoencoderKL.decode runs on meta tensors as is (checked with diffusers 0.42:
    (1, 16, 64, 64) -> (1, 3, 512, 512)).
    """
    from diffusers import AutoencoderKL
    with torch.device(device):
        return AutoencoderKL(**config).eval()


@torch.no_grad()
def decode_latents(vae, latents):
    """SD3.5 latents (B, C, h, w) -> uint8 RGB images (B, 8h, 8w, 3) on the CPU, as the official code.

    z = latents / scaling_factor + shift_factor (no shift when shift_factor is None), decoded, then
    x -> (x / 2 + 0.5).clamp(0, 1) in the VAE's dtype, then round(clip(x * 255, 0, 255)) in float32.
    # fact: XianfengWu01/LightGen scripts/geneval.py, scripts/pipeline_image.py
    """
    channels = vae.config.latent_channels
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"decode_latents expects latents of shape (B, {channels}, h, w), "
                         f"got {tuple(latents.shape)}")
    param = next(vae.parameters())
    z = latents.to(device=param.device, dtype=param.dtype) / vae.config.scaling_factor
    if vae.config.shift_factor is not None:
        z = z + vae.config.shift_factor
    x = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
    # The official converts with numpy (np.round half-to-even, like torch.round) after moving to the CPU.
    x = x.float().cpu().permute(0, 2, 3, 1)
    return torch.round((x * 255).clamp(0, 255)).to(torch.uint8)
