import json

from flead_app.spark_support import jars


def test_artifact_names_drop_the_version_only():
    assert jars.artifact_of("kafka-clients-3.9.2.jar") == "kafka-clients"
    assert jars.artifact_of("spark-sql-kafka-0-10_2.13-4.2.0.jar") == "spark-sql-kafka-0-10_2.13"
    assert jars.artifact_of("zstd-jni-1.5.7-7.jar") == "zstd-jni"
    assert jars.artifact_of("scala-parallel-collections_2.13-1.2.0.jar") == "scala-parallel-collections_2.13"


def test_jars_pyspark_ships_are_dropped_whatever_their_version():
    fetched = ["slf4j-api-1.7.36.jar", "kafka-clients-3.9.2.jar", "lz4-java-1.10.1.jar", "commons-pool2-2.13.1.jar"]
    shipped = ["slf4j-api-2.0.17.jar", "lz4-java-1.11.0.jar", "commons-pool-1.5.4.jar"]
    assert jars.redundant_jars(fetched, shipped) == ["lz4-java-1.10.1.jar", "slf4j-api-1.7.36.jar"]


def test_cache_counts_only_with_a_complete_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEAD_SPARK_JARS", str(tmp_path))
    assert jars.cached_jars("9.9.9") is None
    (tmp_path / "a-1.0.jar").write_bytes(b"x")
    (tmp_path / jars.MARKER).write_text(json.dumps({"jars": ["a-1.0.jar", "b-2.0.jar"]}))
    assert jars.cached_jars("9.9.9") is None  # b is missing
    (tmp_path / "b-2.0.jar").write_bytes(b"x")
    assert [p.name for p in jars.cached_jars("9.9.9")] == ["a-1.0.jar", "b-2.0.jar"]


def test_the_pinned_pyspark_has_its_connector_version_in_the_pom():
    from importlib import resources

    pom = resources.files("flead_app.spark_support").joinpath(jars.POM).read_text()
    assert "spark-sql-kafka-0-10_2.13" in pom and "org.postgresql" in pom
    assert jars.pyspark_version() == "4.2.0"
