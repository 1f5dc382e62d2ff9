from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crane_x7_vla.models.config import DINO_MEAN, DINO_STD, ViTConfig
from crane_x7_vla.models.openvla import OpenVLA
from crane_x7_vla.models.processing import ImageTransform, build_prompt, left_pad, to_pil_rgb

TOWER = ViTConfig(8, 2, 2, 16, 14, 28, mean=DINO_MEAN, std=DINO_STD)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10), np.uint8), r"expected \(H, W, 3\)"),
        (np.zeros((10, 10, 4), np.uint8), r"expected \(H, W, 3\)"),
        (np.zeros((3, 10, 10), np.uint8), r"expected \(H, W, 3\)"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (Image.new("L", (10, 10)), "convert"),
        ("image.png", "numpy array"),
    ],
)
def test_bad_images_are_named(image: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        to_pil_rgb(image)


def test_resize_naive_matches_pil_bicubic_and_normalises() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = ImageTransform([TOWER, TOWER])(img)
    assert out.shape == (6, 28, 28) and out.dtype == torch.float32
    ref = np.asarray(Image.fromarray(img).resize((28, 28), Image.Resampling.BICUBIC), np.float32) / 255.0
    ref = (ref - np.array(DINO_MEAN, np.float32)) / np.array(DINO_STD, np.float32)
    assert torch.allclose(out[:3], torch.from_numpy(ref.transpose(2, 0, 1)), atol=1e-6)


def test_a_batch_is_resized_in_parallel_in_order() -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8) for i in range(6)]
    transform = ImageTransform([TOWER, TOWER])
    batch = transform.batch(images, "cpu")  # 6 images: the thread pool
    assert batch.shape == (6, 6, 28, 28)
    for i, img in enumerate(images):  # row i is image i, bit for bit
        assert torch.equal(batch[i], transform(img))
    with pytest.raises(ValueError, match="expected uint8"):  # a bad frame in a batch is still named
        transform.batch([images[0], images[1].astype(np.float32)], "cpu")


@pytest.mark.parametrize("strategy", ["resize-naive", "resize-crop", "letterbox"])
def test_frames_at_the_model_size_skip_pil_with_the_same_pixels(strategy: str) -> None:
    """Simulator frames come at the model's size: the batch skips the PIL round trip, bit for bit the same."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(5)]
    transform = ImageTransform([TOWER, ViTConfig(8, 2, 2, 16, 14, 28)], strategy)
    fast = transform.batch(frames, "cpu")
    through_pil = transform.normalize([torch.from_numpy(np.stack([transform.resized(f)[i] for f in frames]))
                                       for i in range(2)])
    assert torch.equal(fast, through_pil)
    mixed = transform.batch([*frames[:2], frames[2][:27]], "cpu")  # one frame of another size: the PIL path
    assert torch.equal(mixed[:2], fast[:2])


def test_letterbox_pads_with_mean_and_resize_crop_keeps_centre() -> None:
    img = np.full((10, 40, 3), 255, np.uint8)
    lb = ImageTransform([TOWER], "letterbox")(img)
    corner = (int(255 * DINO_MEAN[0]) / 255.0 - DINO_MEAN[0]) / DINO_STD[0]
    assert lb[0, 0, 0].item() == pytest.approx(corner, abs=1e-3)  # padded (mean-coloured) rows
    crop = ImageTransform([TOWER], "resize-crop")(img)
    white = (1.0 - DINO_MEAN[0]) / DINO_STD[0]
    assert torch.allclose(crop[0], torch.full((28, 28), white), atol=1e-4)  # crop of an all-white image


def test_prompts() -> None:
    assert build_prompt("Pick UP the Block") == "In: What action should the robot take to pick up the block?\nOut:"
    assert build_prompt("go", "v01").endswith("USER: What action should the robot take to go? ASSISTANT:")
    with pytest.raises(ValueError, match="non-empty"):
        build_prompt("  ")


def test_left_pad() -> None:
    ids, mask = left_pad([[1, 5, 6], [1, 7]], pad_id=32000)
    assert ids.tolist() == [[1, 5, 6], [32000, 1, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_prepare_inputs_appends_29871_and_bos(tiny_model: OpenVLA, images: list[np.ndarray]) -> None:
    inputs = tiny_model.prepare_inputs(images[:2], ["pick up the red block", "go"])
    assert inputs.pixel_values.shape == (2, 6, 224, 224)
    assert inputs.input_ids[:, -1].tolist() == [29871, 29871]
    for row, m in zip(inputs.input_ids, inputs.attention_mask, strict=True):
        assert row[m.argmax()].item() == 1  # BOS is the first real token
    assert inputs.input_ids[1, 0].item() == 32000 and inputs.attention_mask[1, 0].item() == 0
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        tiny_model.prepare_inputs(images[:2], ["go"])
    with pytest.raises(TypeError, match="sequence of strings"):
        tiny_model.prepare_inputs(images[:1], "go")  # type: ignore[arg-type]


def test_prompt_ids_are_cached_per_instruction_and_bounded(tiny_model: OpenVLA,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from crane_x7_vla.models import openvla
    from crane_x7_vla.models.processing import build_prompt, prompt_token_ids, underline_token_id

    tok = tiny_model.tokenizer
    direct = prompt_token_ids(tok, build_prompt("pick up the red block"), underline_token_id(tok))
    calls = []
    real = type(tok).__call__

    def counting(self: object, text: str, *args: object, **kwargs: object) -> object:
        calls.append(text)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", counting)  # dunder calls look the method up on the class
    tiny_model._prompt_ids.clear()
    ids, _ = tiny_model.prepare_text(["pick up the red block"] * 64)
    assert ids[0].tolist() == direct and (ids == ids[0]).all()  # the same ids as tokenizing directly
    assert len(calls) == 1  # one tokenization for 64 samples of one instruction
    monkeypatch.setattr(openvla, "PROMPT_CACHE_SIZE", 4)
    tiny_model.prepare_text([f"task {i}" for i in range(10)])
    assert len(tiny_model._prompt_ids) <= 4  # free-text instructions never grow it without bound
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model.prepare_text(["  "])


def test_tokenizer_words_are_single_pieces_with_the_real_special_ids() -> None:
    from crane_x7_vla.models.tiny import BASE_VOCAB, UNDERLINE_ID, build_llama_style_tokenizer

    prompt = build_prompt("pick up the red cube")  # "In: What action ... cube?\nOut:"
    words = ["▁In", "▁What", "▁action", "▁should", "▁the", "▁robot", "▁take", "▁to", "▁pick", "▁up", "▁red",
             "▁cube", "Out"]
    tok = build_llama_style_tokenizer(words)
    pieces = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    assert pieces == ["<s>", "▁In", ":", "▁What", "▁action", "▁should", "▁the", "▁robot", "▁take", "▁to", "▁pick",
                      "▁up", "▁the", "▁red", "▁cube", "?", "<0x0A>", "Out", ":"]
    assert tok.decode(tok(prompt).input_ids, skip_special_tokens=True) == prompt
    assert tok.convert_tokens_to_ids("▁") == UNDERLINE_ID and tok.pad_token_id == BASE_VOCAB
    # Other text still tokenizes (a word that is not in the list falls back to characters).
    assert tok.convert_ids_to_tokens(tok("the plate").input_ids) == ["<s>", "▁the", "▁p", "l", "a", "t", "e"]
    with pytest.raises(ValueError, match="ASCII letters"):
        build_llama_style_tokenizer(["▁two words"])
    # The benchmarks' tokenizer: the same pieces, from the instruction alone.
    from crane_x7_vla.models.tiny import prompt_tokenizer

    bench_tok = prompt_tokenizer("pick up the red cube")
    assert bench_tok.convert_ids_to_tokens(bench_tok(prompt).input_ids) == pieces
