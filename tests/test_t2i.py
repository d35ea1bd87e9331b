"""Text-to-image pieces (gtr/models/t2i.py): T5 text encoder and SD3.5 VAE, on tiny offline models."""
import os

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from gtr.checkpoints import CheckpointError
from gtr.models import t2i

torch.set_num_threads(1)

WORDS = "a photo of cat dog red blue green on the table sitting two birds bench".split()
MAX_LEN = 12


def tiny_tokenizer():
    """A T5 unigram tokenizer from a hand-made vocabulary (transformers 5 builds it with `tokenizers`)."""
    from transformers import T5Tokenizer
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5_config():
    from transformers import T5Config
    return T5Config(vocab_size=64, d_model=32, d_kv=16, num_heads=2, d_ff=64, num_layers=2,
                    feed_forward_proj="gated-gelu", decoder_start_token_id=0)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import T5EncoderModel
    path = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    T5EncoderModel(tiny_t5_config()).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_text_encoder_matches_direct_t5(t5_dir):
    from transformers import T5EncoderModel
    enc = t2i.load_text_encoder(str(t5_dir), max_length=MAX_LEN)
    prompts = ["a photo of a cat", "two blue birds sitting on a green bench zebra"]
    out = enc.encode(prompts)
    assert enc.dim == 32 and out.shape == (2, MAX_LEN, 32) and out.dtype == torch.float32
    assert not out.requires_grad and not any(p.requires_grad for p in enc.model.parameters())
    # The official call: pad to max_length, keep every position, mask only inside the encoder.
    tok = tiny_tokenizer()
    batch = tok(prompts, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt")
    assert (batch.attention_mask[0] == 0).any()  # the short prompt really is padded
    direct = T5EncoderModel.from_pretrained(t5_dir).eval()
    with torch.no_grad():
        ref = direct(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # Without the mask the padded prompt's states differ: the mask is really passed.
    with torch.no_grad():
        unmasked = direct(input_ids=batch.input_ids).last_hidden_state
    assert not torch.allclose(out[0], unmasked[0])


def test_text_encoder_truncates_long_prompts(t5_dir):
    enc = t2i.load_text_encoder(t5_dir, max_length=MAX_LEN)
    long = " ".join(["red dog"] * 40)
    tokens = enc.tokenizer([long], padding="max_length", max_length=MAX_LEN, truncation=True)
    assert len(tokens.input_ids[0]) == MAX_LEN and tokens.input_ids[0][-1] == enc.tokenizer.eos_token_id
    assert enc.encode([long, "a cat"]).shape == (2, MAX_LEN, 32)
    assert t2i.load_text_encoder(t5_dir, max_length=5).encode([long]).shape == (1, 5, 32)


def test_text_encoder_bad_prompts(t5_dir):
    enc = t2i.load_text_encoder(t5_dir, max_length=MAX_LEN)
    for bad in ([], "a cat", ["a cat", 3], [None]):
        with pytest.raises(ValueError, match="prompt"):
            enc.encode(bad)


def test_text_encoder_from_full_t5_and_sentencepiece(tmp_path):
    """A folder like the google/flan-t5-xxl repo: full T5 weights and only a sentencepiece model."""
    import sentencepiece as spm
    from transformers import T5ForConditionalGeneration
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a photo of a cat", "a red dog on the table",
                                 "two blue birds sitting on a green bench"] * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=40,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    folder = tmp_path / "flan"
    folder.mkdir()
    (folder / "spiece.model").write_bytes((tmp_path / "spiece.model").read_bytes())
    torch.manual_seed(1)
    full = T5ForConditionalGeneration(tiny_t5_config())
    full.save_pretrained(folder)
    enc = t2i.load_text_encoder(folder, max_length=MAX_LEN)
    torch.testing.assert_close(enc.model.encoder.block[0].layer[0].SelfAttention.q.weight,
                               full.encoder.block[0].layer[0].SelfAttention.q.weight, rtol=0, atol=0)
    # The ids are sentencepiece's own + </s>, padded with <pad> (what the official slow T5Tokenizer gives).
    prompt = "a photo of a cat"
    ids = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model")).encode(prompt) + [1]
    assert len(ids) < 32
    got = enc.tokenizer([prompt], padding="max_length", max_length=32, truncation=True).input_ids[0]
    assert got == ids + [0] * (32 - len(ids))
    assert enc.encode([prompt]).shape == (1, MAX_LEN, 32)


def test_text_encoder_missing_sources(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist.*flan-t5-xxl.*text_encoder=PATH"):
        t2i.load_text_encoder(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        t2i.load_text_encoder(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty cache (huggingface_hub reads HF_HOME at import, so patch the constant it uses per call).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="google/flan-t5-xxl.*HF_HUB_OFFLINE.*text_encoder=PATH") as err:
        t2i.load_text_encoder("google/flan-t5-xxl")
    assert "\n" not in str(err.value)


def test_text_encoder_corrupt_weights(t5_dir, tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    for name in os.listdir(t5_dir):
        (folder / name).write_bytes((t5_dir / name).read_bytes())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="missing or damaged"):
        t2i.load_text_encoder(folder)


def test_t5_xxl_meta_build():
    model = t2i.build_t5_encoder()
    assert sum(p.numel() for p in model.parameters()) == t2i.T5_XXL_ENCODER_PARAMS  # ~4.76 B
    out = model(input_ids=torch.zeros(1, 128, dtype=torch.long, device="meta")).last_hidden_state
    assert out.shape == (1, 128, 4096) and out.device.type == "meta"


# ----------------------------------------------------------------------------- VAE

def tiny_vae(latent_channels=16, shift=0.0609):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=32,
                         scaling_factor=1.5305, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd35")
    tiny_vae().save_pretrained(root / "vae")
    return root


def test_vae_loads_from_repo_layout_and_vae_folder(sd_dir):
    ref = tiny_vae()
    for src in (sd_dir, sd_dir / "vae", str(sd_dir)):
        vae = t2i.load_sd_vae(src)
        assert not vae.training and vae.config.latent_channels == 16
        assert vae.config.scaling_factor == 1.5305 and vae.config.shift_factor == 0.0609
        for (k, a), (_, b) in zip(vae.state_dict().items(), ref.state_dict().items()):
            assert torch.equal(a, b), k


def test_decode_latents_official_formula(sd_dir):
    vae = t2i.load_sd_vae(sd_dir)
    latents = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    images = t2i.decode_latents(vae, latents)
    assert images.dtype == torch.uint8 and images.shape == (2, 8, 8, 3) and images.device.type == "cpu"
    with torch.no_grad():  # the official lines, by hand
        x = vae.decode(latents / 1.5305 + 0.0609).sample
    x = (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    expected = np.round(np.clip(x * 255, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(images.numpy(), expected)
    assert len(np.unique(expected)) > 10  # not a saturated image


def test_decode_latents_without_shift():
    vae = tiny_vae(shift=None).eval()
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = (vae.decode(latents / 1.5305).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(t2i.decode_latents(vae, latents).numpy(),
                                  np.round(np.clip(x * 255, 0, 255)).astype(np.uint8))


def test_decode_latents_bad_shapes(sd_dir):
    vae = t2i.load_sd_vae(sd_dir)
    for bad in (torch.zeros(16, 4, 4), torch.zeros(1, 4, 4, 4)):
        with pytest.raises(ValueError, match=r"\(B, 16, h, w\).*got"):
            t2i.decode_latents(vae, bad)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument")  # diffusers 0.42 internals
def test_vae_refuses_sd1_missing_and_corrupt(tmp_path, sd_dir, monkeypatch):
    tiny_vae(latent_channels=4).save_pretrained(tmp_path / "sd1" / "vae")
    with pytest.raises(CheckpointError, match="4 latent channels but 16"):
        t2i.load_sd_vae(tmp_path / "sd1")
    with pytest.raises(CheckpointError, match="does not exist.*stable-diffusion-3.5-large"):
        t2i.load_sd_vae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither vae/config.json nor config.json"):
        t2i.load_sd_vae(tmp_path / "empty")
    bad = tmp_path / "bad" / "vae"
    bad.mkdir(parents=True)
    (bad / "config.json").write_bytes((sd_dir / "vae" / "config.json").read_bytes())
    weights = (sd_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated
    with pytest.raises(CheckpointError, match="missing or damaged"):
        t2i.load_sd_vae(tmp_path / "bad")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="stable-diffusion-3.5-large.*HF_HUB_OFFLINE.*model.vae_checkpoint=PATH"):
        t2i.load_sd_vae()


def test_sd35_vae_meta_build():
    vae = t2i.build_sd_vae()
    # 83,819,683 parameters (encoder 34,274,208 + decoder 49,545,475): the SD3.5 VAE's size.
    assert sum(p.numel() for p in vae.parameters()) == t2i.SD35_VAE_PARAMS == 83_819_683
    assert sum(p.numel() for p in vae.decoder.parameters()) == 49_545_475
    out = vae.decode(torch.empty(1, 16, 64, 64, device="meta")).sample
    assert out.shape == (1, 3, 512, 512) and out.device.type == "meta"
