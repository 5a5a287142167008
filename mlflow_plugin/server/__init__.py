"""What runs inside ``mlflow server --app-name weightgate``: enforcement hooks, the gate's endpoints,
the claims and ledger tables in the server's database, and the gate page."""
