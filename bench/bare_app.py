"""The ceiling for this stack: a bare Starlette endpoint that reads the body and answers 200."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def hook(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")


app = Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])
