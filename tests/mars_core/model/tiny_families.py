"""Tiny, randomly initialised image-text-to-text models of each supported family, built offline.

Each builder returns a model and a processor small enough to train on a CPU
in seconds: one or two layers, hidden sizes of 32 to 64, images of 28 pixels
or less. The tokenizer is word-level, built with ``tokenizers``, and holds
the special tokens the family's processor looks up. Chat templates imitate
the published ones in shape (role markers, image placeholder, end-of-turn
token), because answer-only masking depends on that shape.

``save_family(name, folder)`` writes a folder that
``AutoModelForImageTextToText`` and ``AutoProcessor`` load back. Some
processors cannot be built in every environment (video processors and
Pixtral's need torchvision, SmolVLM's needs num2words): the model is then
saved alone and the error is returned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "user assistant system what is this digit color shape the a an of in image picture answer yes no "
    "zero one two three four five six seven eight nine red green blue odd even question"
).split()
PUNCTUATION = ("?", ".", ",", "!", ":", ";", "'", "-", "(", ")")

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def build_tokenizer(specials: list[str], named: dict[str, str], extra: dict[str, str] | None = None,
                    bos: str | None = None) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``WORDS``; ``specials`` become special tokens, ``named`` maps roles to them."""
    tokens = ["<pad>", "<unk>", *[t for t in specials if t not in ("<pad>", "<unk>")]]
    vocab = {token: index for index, token in enumerate(tokens)}
    for word in [*PUNCTUATION, *WORDS]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in tokens])
    kwargs = dict(named)
    if bos is not None:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", extra_special_tokens=extra or {},
        padding_side="right", **kwargs,
    )


def _loop(user: str, assistant_open: str, close: tuple[str, str], image: str, generation: str, start: str = "") -> str:
    """A Jinja chat template: ``start``, then each turn wrapped in its role markers.

    ``close`` is the text that ends a user turn and the text that ends an assistant turn. No whitespace control, so newlines in markers stay.
    """
    return (
        start
        + "{% for message in messages %}"
        + "{% if message['role'] == 'user' %}" + user + "{% else %}" + assistant_open + "{% endif %}"
        + "{% for part in message['content'] %}"
        + "{% if part['type'] == 'image' %}" + image + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        + "{% endfor %}"
        + "{% if message['role'] == 'user' %}" + close[0] + "{% else %}"
        + close[1] + "{% endif %}"
        + "{% endfor %}"
        + "{% if add_generation_prompt %}" + generation + "{% endif %}"
    )


def _with_video(processor_class, video_class: str, video_kwargs: dict, **kwargs) -> Callable:
    """A processor factory that also builds the family's video processor, which needs torchvision.

    The video processor is looked up when the factory is called, so building the model never needs torchvision.
    """
    def make():
        import transformers

        return processor_class(video_processor=getattr(transformers, video_class)(**video_kwargs), **kwargs)

    return make


# ChatML, as Qwen models use it.
CHATML = _loop("<|im_start|>user\n", "<|im_start|>assistant\n", ("<|im_end|>\n", "<|im_end|>\n"),
               "<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>assistant\n")
# LLaVA-1.5 style: "USER: <image>\n... ASSISTANT: answer</s>".
LLAVA = _loop("user : ", "assistant : ", (" ", "</s> "), "<image> ", "assistant : ")


def llava():
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tokenizer(["<s>", "</s>", "<image>"], {"eos_token": "</s>"}, {"image_token": "<image>"})
    make_processor = functools.partial(LlavaProcessor, 
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=4, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=16, patch_size=4),
        text_config=LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=16,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config), make_processor


def llava_next():
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    tokenizer = build_tokenizer(["<s>", "</s>", "<image>"], {"eos_token": "</s>"}, {"image_token": "<image>"})
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=[[16, 16], [16, 32]],
    )
    make_processor = functools.partial(LlavaNextProcessor, image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=16, patch_size=4),
        text_config=LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=[[16, 16], [16, 32]],
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    return LlavaNextForConditionalGeneration(config), make_processor


def llava_onevision():
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor, Qwen2Config, SiglipVisionConfig)

    tokenizer = build_tokenizer(["<|im_start|>", "<|im_end|>", "<image>", "<video>"], {"eos_token": "<|im_end|>"},
                                {"image_token": "<image>", "video_token": "<video>"})
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16},
                                                      image_grid_pinpoints=[[16, 16], [16, 32]])
    template = _loop("<|im_start|>user\n", "<|im_start|>assistant\n", ("<|im_end|>\n", "<|im_end|>\n"), "<image>\n",
                     "<|im_start|>assistant\n")
    make_processor = _with_video(LlavaOnevisionProcessor, "LlavaOnevisionVideoProcessor", {"size": {"height": 16, "width": 16}},
                                 image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=16,
                                 vision_feature_select_strategy="full", chat_template=template)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=16, patch_size=4),
        text_config=Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[16, 16], [16, 32]], vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    return LlavaOnevisionForConditionalGeneration(config), make_processor


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


QWEN_VIDEO = {"size": {"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, "patch_size": 4, "merge_size": 2, "temporal_patch_size": 2}


def _qwen_tokenizer():
    return build_tokenizer(QWEN_SPECIALS, {"eos_token": "<|im_end|>"},
                           {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                            "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"})


def _qwen_ids(tokenizer) -> dict:
    return dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )


def qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    tokenizer = _qwen_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                               temporal_patch_size=2)
    make_processor = _with_video(Qwen2VLProcessor, "Qwen2VLVideoProcessor", QWEN_VIDEO, image_processor=image_processor,
                                 tokenizer=tokenizer, chat_template=CHATML)
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        text_config=dict(vocab_size=len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **TEXT),
        **_qwen_ids(tokenizer),
    )
    return Qwen2VLForConditionalGeneration(config), make_processor


def qwen2_5_vl():
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessorPil)

    tokenizer = _qwen_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                               temporal_patch_size=2)
    make_processor = _with_video(Qwen2_5_VLProcessor, "Qwen2VLVideoProcessor", QWEN_VIDEO, image_processor=image_processor,
                                 tokenizer=tokenizer, chat_template=CHATML)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=8,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **TEXT),
        **_qwen_ids(tokenizer),
    )
    return Qwen2_5_VLForConditionalGeneration(config), make_processor


def qwen3_vl():
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    tokenizer = _qwen_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                               temporal_patch_size=2)
    make_processor = _with_video(Qwen3VLProcessor, "Qwen3VLVideoProcessor", QWEN_VIDEO, image_processor=image_processor,
                                 tokenizer=tokenizer, chat_template=CHATML)
    config = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=len(tokenizer), head_dim=16,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **TEXT),
        **_qwen_ids(tokenizer),
    )
    return Qwen3VLForConditionalGeneration(config), make_processor


IDEFICS_TEMPLATE = _loop("User:", "Assistant:", ("<end_of_utterance>\n", "<end_of_utterance>\n"), "<image>",
                         "Assistant:", start="<|im_start|>")


def _idefics_parts(tokenizer_extra: dict | None = None):
    specials = ["<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"]
    return build_tokenizer(specials, {"eos_token": "<end_of_utterance>"}, {"image_token": "<image>", **(tokenizer_extra or {})})


def idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor

    tokenizer = _idefics_parts()
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 16},
                                                max_image_size={"longest_edge": 16})
    make_processor = functools.partial(Idefics3Processor, image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
    )
    return Idefics3ForConditionalGeneration(config), make_processor


def smolvlm():
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, SmolVLMProcessor

    tokenizer = _idefics_parts()
    image_processor = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": 16},
                                               max_image_size={"longest_edge": 16})
    make_processor = _with_video(SmolVLMProcessor, "SmolVLMVideoProcessor",
                                 {"size": {"longest_edge": 16}, "max_image_size": {"longest_edge": 16}},
                                 image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                 chat_template=IDEFICS_TEMPLATE)
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
    )
    return SmolVLMForConditionalGeneration(config), make_processor


def paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessorPil

    tokenizer = build_tokenizer(["<bos>", "<eos>", "<image>"], {"eos_token": "<eos>"}, {"image_token": "<image>"},
                                bos="<bos>")
    image_processor = SiglipImageProcessorPil(size={"height": 16, "width": 16})
    image_processor.image_seq_length = 16
    make_processor = functools.partial(PaliGemmaProcessor, image_processor=image_processor, tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4, projection_dim=32),
        text_config=dict(vocab_size=len(tokenizer), head_dim=16, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projection_dim=32,
    )
    return PaliGemmaForConditionalGeneration(config), make_processor


def gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    specials = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tokenizer = build_tokenizer(specials, {"eos_token": "<eos>"},
                                {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                 "image_token": "<image_soft_token>"}, bos="<bos>")
    template = _loop("<start_of_turn>user\n", "<start_of_turn>model\n", ("<end_of_turn>\n", "<end_of_turn>\n"),
                     "<start_of_image>", "<start_of_turn>model\n", start="{{ bos_token }}")
    image_processor = Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
    make_processor = functools.partial(Gemma3Processor, image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                                image_seq_length=4)
    config = Gemma3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=4),
        text_config=dict(vocab_size=len(tokenizer), head_dim=16, sliding_window=16, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **TEXT),
        mm_tokens_per_image=4, boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(config), make_processor


def mllama():
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|image|>",
                "<|python_tag|>"]
    tokenizer = build_tokenizer(specials, {"eos_token": "<|eot_id|>"}, {"image_token": "<|image|>"},
                                bos="<|begin_of_text|>")
    template = _loop("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     ("<|eot_id|>", "<|eot_id|>"), "<|image|>", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     start="{{ bos_token }}")
    image_processor = MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=1)
    make_processor = functools.partial(MllamaProcessor, image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=2, image_size=16, patch_size=4, max_num_tiles=1, intermediate_layers_indices=[0],
                           vision_output_dim=64, supported_aspect_ratios=[[1, 1]]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, cross_attention_layers=[1],
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    model = MllamaForConditionalGeneration(config)
    # Mllama starts its cross-attention gates at zero, so the image cannot reach the text of a fresh model.
    # Open them, as training has in a published checkpoint, so that vision probes have something to learn.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)
    return model, make_processor


def internvl():
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor

    specials = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = build_tokenizer(specials, {"eos_token": "<|im_end|>"},
                                {"start_image_token": "<img>", "end_image_token": "</img>",
                                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    template = _loop("<|im_start|>user\n", "<|im_start|>assistant\n", ("<|im_end|>\n", "<|im_end|>\n"), "<IMG_CONTEXT>\n",
                     "<|im_start|>assistant\n")
    image_processor = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=False)
    make_processor = _with_video(InternVLProcessor, "InternVLVideoProcessor", {"size": {"height": 16, "width": 16}},
                                 image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                                 chat_template=template)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[16, 16], patch_size=[4, 4]),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TEXT),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
    )
    return InternVLForConditionalGeneration(config), make_processor


def mistral3():
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil, PixtralProcessor

    specials = ["<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tokenizer = build_tokenizer(specials, {"eos_token": "</s>"}, {"image_token": "[IMG]"}, bos="<s>")
    template = _loop("[INST]", "", ("[/INST]", "</s>"), "[IMG]", "", start="{{ bos_token }}")
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 16}, patch_size=4)
    make_processor = functools.partial(PixtralProcessor, image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                                 spatial_merge_size=2, chat_template=template)
    config = Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, head_dim=16, image_size=16, patch_size=4),
        text_config=dict(model_type="mistral", vocab_size=len(tokenizer), head_dim=16, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1,
    )
    return Mistral3ForConditionalGeneration(config), make_processor


FAMILIES: dict[str, Callable] = {
    "llava": llava, "llava_next": llava_next, "llava_onevision": llava_onevision, "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "idefics3": idefics3, "smolvlm": smolvlm,
    "paligemma": paligemma, "gemma3": gemma3, "mllama": mllama, "internvl": internvl, "mistral3": mistral3,
}


def family_params(cases=None) -> list:
    """pytest parameters over the families (or ``(family, ...)`` tuples), marked ``torchvision`` where needed."""
    from mars_core.model.base import TORCHVISION_FAMILIES

    cases = list(FAMILIES) if cases is None else cases
    params = []
    for case in cases:
        family = case[0] if isinstance(case, tuple) else case
        marks = [pytest.mark.torchvision] if family in TORCHVISION_FAMILIES else []
        params.append(pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=marks,
                                   id="-".join(case) if isinstance(case, tuple) else case))
    return params


def save_family(name: str, folder: Path) -> str | None:
    """Build family ``name`` with a fixed seed and save it to ``folder``.

    The model is always saved. Returns None when the processor was saved
    too, else the error its construction raised, as ``Type: message``.
    """
    torch.manual_seed(0)
    model, make_processor = FAMILIES[name]()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    try:
        processor = make_processor()
    except Exception as exc:  # noqa: BLE001 - the reason is reported by a skipped test
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    processor.save_pretrained(folder)
    return None


def save_qwen2_vl_files_without_processor(folder: Path) -> None:
    """Write the files of a Qwen2-VL checkpoint without building its processor, which needs torchvision."""
    import json

    from transformers import Qwen2VLImageProcessorPil

    save_family("qwen2_vl", folder)
    _qwen_tokenizer().save_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2).to_dict()
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": "Qwen2VLProcessor", "image_processor": image_processor,
                    "video_processor": {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 4}})
    )
