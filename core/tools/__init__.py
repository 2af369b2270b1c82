"""The tool registry: one definition of a tool, validated, invoked safely, exported.

    model.py     the format of a tool (pydantic), and tool.schema.json generated from it
    loader.py    tools.json: every problem at once, each naming the tool and the field
    registry.py  the effective registry: the file's tools and those registered through the
                 API (Postgres), each an immutable name@version
    invoke.py    a call: arguments checked against the schema, the kind dispatched, limits
                 applied, the call logged
    kinds.py     what each kind does: http, python, llm, mcp
    compat.py    the seed's rule for which tool may follow which in a pipeline
    export.py    OpenAI `tools`, LangChain StructuredTools
    mcp_server.py  the registry as an MCP server (functions/tools.py serves it at /mcp)
    builtin.py   the python tools the sample tools.json uses
"""
