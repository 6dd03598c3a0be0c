"""Inference over a loaded model: functions, each taking the model `bertkit.load` returned.

    predict.py     sequence classification / regression: `predict(model, texts[, texts_b])`
    tag.py         token classification: entities (or word tags) with character offsets, `tag(model, texts)`
    answer.py      extractive QA: one question about one context, `answer(model, question, context)`
    embedding.py   token, word and sentence vectors from an encoder (`BertEmbedding`)
    embed_parts.py a big file's vectors as parts written by several processes, and `read_parts`
    fill_mask.py   the masked-LM head's guesses for [MASK] tokens, `fill_mask(model, texts)`

Each runs the model on its own device, in eval mode without gradients, and puts it back as it was.
Their shared pieces live in the per-task packages below them (tasks/, tagging/, qa/).
"""
