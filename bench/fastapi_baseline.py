"""A baseline, not part of the mesh: what a Python developer would otherwise write.

A minimal FastAPI + asyncpg app doing the same DecreaseStock transaction (the
very statement of inventory_svc.store) and GetStock read, served by uvicorn with
its standard extras (uvloop, httptools):

    BENCH_DATABASE_URL=postgresql://… uvicorn bench.fastapi_baseline:app --port 8001
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from inventory_svc.domain import SaleRequest
from inventory_svc.store import RECORD_SALE, record_sale_arguments

pool: asyncpg.Pool
POOL_SIZE = 10  # inventory_svc's DB_POOL_SIZE default


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(
        os.environ["BENCH_DATABASE_URL"], min_size=POOL_SIZE, max_size=POOL_SIZE
    )
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


class DecreaseStock(BaseModel):
    product_id: int = Field(gt=0)
    quantity: int = Field(gt=0, le=10_000)
    order_id: str = Field(min_length=1, max_length=64)


@app.post("/inventory/decrease")
async def decrease_stock(body: DecreaseStock) -> dict:
    # sold_by stays "": the baseline knows no caller (no token checked).
    request = SaleRequest(body.order_id, body.product_id, body.quantity)
    async with pool.acquire() as conn:
        try:
            remaining = await conn.fetchval(RECORD_SALE, *record_sale_arguments(request))
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "order id already used") from None
    if remaining is None:
        raise HTTPException(400, "unknown product or insufficient stock")
    return {"product_id": body.product_id, "current_stock": remaining, "order_id": body.order_id}


@app.get("/inventory/{product_id}")
async def get_stock(product_id: int) -> dict:
    row = await pool.fetchrow(
        "SELECT product_id, name, stock FROM products WHERE product_id = $1", product_id
    )
    if row is None:
        raise HTTPException(404, "no such product")
    return dict(row)
