-- MLflow's backend store beside Airflow's metadata DB (same server, its own database).
CREATE DATABASE mlflow OWNER airflow;
