"""Tiny, randomly initialised models of each family, written as normal HF model directories: the real processors,
chat templates and module layouts, small enough to build, train and serve in seconds on a CPU. `llava` also holds
what every factory shares (the locally trained tokenizer, the Llama and CLIP configs, saving)."""
