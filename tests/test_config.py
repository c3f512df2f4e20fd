"""Config models: defaults, validation, and the Prefect parameter form they produce."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tag_pipeline.config import DatasetConfig, GNNConfig, PipelineConfig


def test_defaults_are_tape_cora():
    cfg = PipelineConfig()
    assert cfg.dataset.name == "cora"
    assert cfg.features == ["TA", "E", "P"] and cfg.seeds == [0, 1, 2, 3]
    assert cfg.llm.top_k == 5 and cfg.gnn.epochs == 200


@pytest.mark.parametrize("bad", [{"features": []}, {"seeds": [0, 0]}, {"features": ["X"]}, {"nope": 1}])
def test_invalid_pipeline_config(bad):
    with pytest.raises(ValidationError):
        PipelineConfig(**bad)


def test_configs_are_frozen():
    with pytest.raises(ValidationError):
        GNNConfig().hidden = 3


def test_subset_lower_bound():
    with pytest.raises(ValidationError, match="subset"):
        DatasetConfig(subset=2)


def test_flow_parameter_schema_documents_every_field():
    from flows.tag import tag
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(tag.fn).model_dump()
    props = schema["properties"]
    assert set(props) == set(PipelineConfig.model_fields)
    gnn = schema["definitions"]["GNNConfig"]["properties"]
    assert all(gnn[name].get("description") for name in GNNConfig.model_fields)
    assert gnn["dropout"]["default"] == GNNConfig().dropout


def test_num_layers_per_model_or_shared():
    per_model = GNNConfig()
    assert per_model.layers_for("gcn") == 2 and per_model.layers_for("sage") == 3
    assert GNNConfig(num_layers=4).layers_for("sage") == 4
    assert GNNConfig(num_layers={"gcn": 5}).layers_for("mlp") == 2
    with pytest.raises(ValidationError, match="num_layers"):
        GNNConfig(num_layers={"gcn": 0})
    with pytest.raises(ValidationError):
        GNNConfig(num_layers={"gat": 2})


def test_a_custom_dataset_is_named_after_its_nodes_file_or_its_name():
    from pydantic import ValidationError

    from tag_pipeline.config import CustomDataConfig, DatasetConfig

    files = dict(edges="e.csv", classes="c.txt")
    assert DatasetConfig(name="custom", custom=CustomDataConfig(nodes="my/Papers 2024.csv", **files)).lake_name == "papers-2024"
    assert CustomDataConfig(nodes="data/cora.csv", **files).dataset_name() == "cora-custom"  # never a built-in's folder
    named = DatasetConfig(name="custom", custom=CustomDataConfig(nodes="n.csv", name="my_tag", **files))
    assert named.lake_name == "my_tag"
    assert DatasetConfig(name="pubmed").lake_name == "pubmed"
    with pytest.raises(ValidationError, match="built-in dataset's name"):
        CustomDataConfig(nodes="n.csv", name="cora", **files)
    with pytest.raises(ValidationError, match="pattern"):
        CustomDataConfig(nodes="n.csv", name="My TAG", **files)
