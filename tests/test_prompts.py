"""A prompt's words against the prior's vocabulary: normalised, warned about, or refused (strict)."""

import logging

import pytest
import torch
import trimesh
from transformers import CLIPTokenizer

from engine import (
    Cancelled,
    CancelToken,
    GenerateConfig,
    MeshInput,
    PaintConfig,
    Prior,
    PriorError,
    PromptError,
    PromptReader,
    SketchConfig,
    generate,
    load_prior,
    load_prompt_reader,
    paint,
    sketch,
)
from engine.prompts import check_words
from engine.testing import tiny_components, tiny_metadata


@pytest.fixture(scope="module")
def embedded():
    return load_prior()


def test_the_embedded_prior_knows_seven_shapes_seven_colours_and_its_view_words(embedded):
    assert embedded.vocabulary == (
        "a", "red", "orange", "yellow", "green", "blue", "purple", "white",
        "cube", "sphere", "cylinder", "cone", "torus", "pyramid", "house",
        "front", "side", "back", "overhead", "view", ",")


def test_case_and_punctuation_are_normalised_before_tokenising(embedded):
    assert embedded.normalise_prompt("A big red cube.") == "a big red cube"
    assert embedded.unknown_words("A big red cube.") == ["big"]
    torch.testing.assert_close(embedded.encode_prompts(["A big red cube."]),
                               embedded.encode_prompts(["a big red cube"]), rtol=0, atol=0)
    # The view suffix's comma is a token the prior knows: prompts it was trained on keep their tokens.
    suffixed = "a red cube, front view"
    assert embedded.tokenizer(embedded.normalise_prompt(suffixed)).input_ids == embedded.tokenizer(suffixed).input_ids
    assert embedded.unknown_words("RED Cube!! (a red-cube)") == []


def test_a_prompt_reader_loads_the_tokenizer_alone_and_reads_prompts_as_its_prior_does(embedded):
    reader = load_prompt_reader()
    assert type(reader) is PromptReader and not hasattr(reader, "unet")
    assert reader.vocabulary == embedded.vocabulary
    assert reader.max_prompt_tokens == embedded.max_prompt_tokens
    for prompt in ("A big red cube.", "a wooden chair", "a red cube, front view"):
        assert reader.normalise_prompt(prompt) == embedded.normalise_prompt(prompt)
        assert check_words(reader, prompt) == check_words(embedded, prompt)
    with pytest.raises(PromptError, match="wooden"):
        check_words(reader, "a wooden chair", strict=True)


def test_a_folder_without_a_tokenizer_is_one_prior_error_naming_it(tmp_path):
    with pytest.raises(PriorError, match="missing tokenizer/"):
        load_prompt_reader(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(PriorError, match="could not load the tokenizer at"):
        load_prompt_reader(tmp_path)


def test_an_unknown_word_is_a_warning_that_names_it_and_lists_the_known_words(tiny, caplog):
    token = CancelToken()
    token.cancel()  # the prompt is checked before the first step, where the run stops
    with caplog.at_level(logging.WARNING), pytest.raises(Cancelled):
        generate("a wooden chair", tiny, GenerateConfig(steps=1), cancel=token)
    (message,) = [record.getMessage() for record in caplog.records if "does not know" in record.getMessage()]
    assert message.startswith("the prompt 'a wooden chair' has words the prior does not know")
    assert ": wooden. It knows: a, an, of, red, green, blue, yellow, cube, sphere, chair" in message


def test_a_prompt_the_prior_knows_gets_no_warning(tiny):
    assert check_words(tiny, "A red cube, front view.", "blurry") == []


def box() -> MeshInput:
    mesh = trimesh.creation.box()
    return MeshInput(mesh.vertices, mesh.faces)


@pytest.mark.parametrize("run, config", [
    (lambda prompt, prior, config, **kw: generate(prompt, prior, config, **kw), GenerateConfig),
    (lambda prompt, prior, config, **kw: paint(box(), prompt, prior, config, **kw), PaintConfig),
    (lambda prompt, prior, config, **kw: sketch(box(), prompt, prior, config, **kw), SketchConfig),
])
def test_strict_refuses_unknown_words_in_the_engine_api_before_any_work(tiny, run, config):
    events = []
    with pytest.raises(PromptError) as refused:
        run("a wooden cube", tiny, config(strict_prompt=True), on_progress=events.append)
    assert isinstance(refused.value, ValueError) and refused.value.field == "prompt"
    assert ": wooden." in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(PromptError) as refused:
        run("a red cube", tiny, config(strict_prompt=True, negative_prompt="soggy"), on_progress=events.append)
    assert refused.value.field == "negative_prompt" and "the negative prompt 'soggy'" in str(refused.value)
    assert events == []


def test_a_subword_tokenizer_like_stable_diffusions_never_warns():
    """SD's CLIP tokenizer is byte-level BPE: it spells any word, though it has an unknown token."""
    unet, vae, text_encoder, _, scheduler = tiny_components()
    tokenizer = CLIPTokenizer(model_max_length=12)
    assert tokenizer.unk_token is not None
    prior = Prior(unet, vae, text_encoder, tokenizer, scheduler, tiny_metadata())
    assert prior.vocabulary is None
    assert prior.normalise_prompt("A wooden chair!") == "A wooden chair!"
    assert prior.unknown_words("A wooden chair!") == []
    assert check_words(prior, "A wooden chair!", "soggy", strict=True) == []
    assert prior.encode_prompts(["A wooden chair!"]).shape[0] == 1
