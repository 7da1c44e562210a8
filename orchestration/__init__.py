"""Orchestration ring: the monthly drop flow (`drop_flow`, plain functions) and the Airflow DAG that schedules it
(`dags/shopclip_drop.py`). Depends inward on the indexer, training, registry and client; nothing imports it."""
