-- Runs once, when the PostgreSQL volume is first created. The `prefect`
-- database comes from POSTGRES_DB; MLflow keeps its runs in its own database.
CREATE DATABASE mlflow;
