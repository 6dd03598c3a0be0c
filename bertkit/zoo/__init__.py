"""The model zoo: named pretrained BERTs, Hugging Face Hub downloads, and checkpoint converters.

    names.py             the table: GluonNLP 0.10's (model, dataset) names and Google's 24 smaller
                         BERTs, each with its Hub repository (where one exists) and its shape
    hub.py               fetch a repository's config, weights and vocabulary into the standard
                         Hugging Face cache through `huggingface_hub` (never code)
    mxnet_params.py      read MXNet's NDArray list format (GluonNLP `.params`) without MXNet
    sstable.py           read a LevelDB table (the `.index` file of a TensorFlow checkpoint)
    tf_bundle.py         read a TensorFlow tensor bundle (`.index` + `.data-*`) without TensorFlow
    convert_gluonnlp.py  GluonNLP BERTModel / BERTClassifier tensors -> Hugging Face names
    convert_tf.py        Google BERT (modeling.py) variables -> Hugging Face names
    convert.py           either source -> a bertkit checkpoint directory (and the cache used on load)
    resolve.py           what `bertkit.load` calls for a name that is none of the plain cases

Nothing here imports torch, MXNet or TensorFlow at import time.
"""
