"""The batched JSON reward server (`firm serve`) and its Python client."""
