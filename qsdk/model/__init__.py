"""The flow model, validated at construction: the registry read from ``pipelines/``, stages and
their parameters, flows, feature views."""
