"""Analysis methods: dataset-level and weight-level views of a model."""
