"""What calling a tool costs: through the REST route and through MCP, against the floors."""
