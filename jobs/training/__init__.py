"""The one trainer (`loop`), its Ray Train + DeepSpeed glue (`common`), metrics (`metrics`, `progress`), and a
training task per model family (`tokenizer`, `transformer`, `commit`; chosen in `families`)."""
