"""What a run step costs in Orchesity's executor, against DBOS Transact (see __main__.py)."""
