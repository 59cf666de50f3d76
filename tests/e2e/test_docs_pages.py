"""The docs site as a reader sees it: served by the mesh's Envoy at /docs/ and
rendered by a real headless Chromium (Debian's ``chromium``).

Every page must load without console errors or uncaught exceptions, and without
a single request leaving Envoy's origin (no CDN: the site works offline).
A full-page screenshot of each page is saved under test-artifacts/docs/.
"""

import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from blueprint.topology import ROOT
from devtools.postman import FILE_NAME as POSTMAN_COLLECTION
from devtools.sandbox import Mesh

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium phones home, and this
# machine's closed network refuses those connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "docs"
# The big vendored bundles render in well under this; a broken page never does.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Visit:
    """One page in a fresh browser context, with everything that went wrong on it."""

    page: Page
    origin: str
    screenshot: str  # file name under test-artifacts/docs/
    errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    async def open(self, path: str) -> None:
        response = await self.page.goto(f"{self.origin}{path}", wait_until="load")
        assert response is not None
        assert response.ok, f"{path}: HTTP {response.status}"

    def assert_clean(self) -> None:
        """No console errors, no uncaught exceptions, no request outside the origin."""
        assert self.errors == []
        assert self.foreign_requests == []


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (Playwright's own browser downloads cannot work here), and
    an empty screenshot folder, so it holds only this run's screenshots."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: sudo apt-get install -y chromium")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return CHROMIUM


@pytest_asyncio.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def visit(
    browser: Browser, mesh: Mesh, request: pytest.FixtureRequest
) -> AsyncIterator[Visit]:
    """A fresh page; its full-page screenshot is saved afterwards, pass or fail."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    name = re.sub(r"\W+", "-", request.node.name.removeprefix("test_")).strip("-")
    seen = Visit(page, mesh.http_url, f"{name}.png")
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith((f"{mesh.http_url}/", "data:"))
            else seen.foreign_requests.append(r.url)
        ),
    )
    yield seen
    await page.screenshot(path=ARTIFACTS / seen.screenshot, full_page=True)
    await context.close()


async def test_root_redirects_to_the_landing_page(visit: Visit):
    await visit.open("/")
    assert visit.page.url == f"{visit.origin}/docs/"
    await expect(visit.page.get_by_role("heading", name="PolyglotMicro docs")).to_be_visible()
    visit.assert_clean()


async def test_landing_page_links_resolve_behind_docs(visit: Visit):
    await visit.open("/docs/")
    for view in ("gRPC reference", "REST reference", "Postman", "Events (AsyncAPI)"):
        card = visit.page.locator(".card").get_by_role("link", name=view, exact=True)
        await expect(card).to_be_visible()
    links = visit.page.locator("main a[href]")
    hrefs = {await links.nth(i).get_attribute("href") for i in range(await links.count())}
    local = sorted(h for h in hrefs if h and not h.startswith("http"))
    downloads = {"openapi.json", "asyncapi.yaml", POSTMAN_COLLECTION}
    assert {"grpc.html", "rest.html", "asyncapi.html", *downloads} <= set(local)
    for href in local:
        response = await visit.page.request.get(f"{visit.origin}/docs/{href.split('#')[0]}")
        assert response.ok, f"{href}: HTTP {response.status}"
    dashboards = visit.page.locator("main")
    for text in ("http://localhost:15672", "http://localhost:8081", "http://127.0.0.1:9901"):
        await expect(dashboards).to_contain_text(text)
    visit.assert_clean()


async def test_grpc_reference_documents_services_routes_and_fields(visit: Visit):
    await visit.open("/docs/grpc.html")
    page = visit.page
    rpc = page.locator('[id="polyglot.inventory.v1.InventoryService.DecreaseStock"]')
    await expect(rpc).to_contain_text("rpc DecreaseStock(DecreaseStockRequest)")
    await expect(rpc.locator("a.route")).to_have_text(re.compile(r"POST\s+/inventory/decrease"))
    request = page.locator('[id="polyglot.inventory.v1.DecreaseStockRequest"]')
    await expect(request.locator("tr", has_text="order_id")).to_contain_text(
        "Caller's order id, the idempotency key"
    )
    for service in ("InventoryService", "AnalyticsService", "NotificationService"):
        await expect(page.locator(f'[id$=".{service}"]')).to_be_visible()
    await expect(page.locator('[id="polyglot.notify.v1.NotificationStatus"]')).to_be_visible()
    await expect(page.get_by_text("NOTIFICATION_STATUS_SENT", exact=True)).to_be_visible()
    visit.assert_clean()


async def test_rest_reference_lists_operations_and_error_responses(visit: Visit):
    await visit.open("/docs/rest.html")
    page = visit.page
    for path in ("/inventory/decrease", "/analytics/summary", "/notifications"):
        await expect(page.locator(f'.opblock-summary-path[data-path="{path}"]')).to_be_visible()
    decrease = page.locator('[id="operations-InventoryService-InventoryService-DecreaseStock"]')
    await decrease.locator(".opblock-summary").click()
    for code in ("200", "400", "404", "409", "503"):
        await expect(decrease.locator(f'tr.response[data-code="{code}"]')).to_be_visible()
    await expect(decrease.locator('tr.response[data-code="409"]')).to_contain_text("ALREADY_EXISTS")
    visit.assert_clean()


async def test_swagger_try_it_out_calls_envoy_on_the_same_origin(visit: Visit):
    # From the gRPC reference: its route link is a Swagger UI deep link to the operation.
    await visit.open("/docs/grpc.html")
    await visit.page.locator(
        '[id="polyglot.inventory.v1.InventoryService.GetStock"] a.route'
    ).click()
    await visit.page.wait_for_url("**/docs/rest.html#/InventoryService/InventoryService-GetStock")
    get_stock = visit.page.locator('[id="operations-InventoryService-InventoryService-GetStock"]')
    await expect(get_stock).to_have_class(re.compile(r"\bis-open\b"))
    await get_stock.get_by_role("button", name="Try it out").click()
    await get_stock.locator('tr[data-param-name="product_id"] input').fill("1")
    await get_stock.get_by_role("button", name="Execute").click()
    live = get_stock.locator(".live-responses-table")
    await expect(live.locator("tr.response .response-col_status")).to_have_text("200")
    await expect(live).to_contain_text("Laptop Gamer")
    await expect(get_stock.locator(".request-url")).to_contain_text(f"{visit.origin}/inventory/1")
    visit.assert_clean()


async def test_swagger_authorize_sends_the_bearer_token(visit: Visit, mesh: Mesh):
    await visit.open("/docs/rest.html")
    page = visit.page
    await page.locator(".scheme-container button.authorize").click()
    dialog = page.locator(".modal-ux")
    await dialog.locator(".auth-container input").fill(mesh.token(["reports:read"]))
    await dialog.locator(".auth-btn-wrapper button.authorize").click()
    await dialog.locator(".auth-btn-wrapper button.btn-done").click()
    listing = page.locator('[id="operations-AnalyticsService-AnalyticsService-ListSaleEvents"]')
    await listing.locator(".opblock-summary").click()
    await expect(listing).to_contain_text("scope reports:read")
    await listing.get_by_role("button", name="Try it out").click()
    await listing.get_by_role("button", name="Execute").click()
    live = listing.locator(".live-responses-table")
    await expect(live.locator("tr.response .response-col_status")).to_have_text("200")
    await expect(listing.locator(".curl-command")).to_contain_text("Authorization: Bearer ")
    visit.assert_clean()


async def test_asyncapi_page_shows_the_event_and_its_queues(visit: Visit):
    await visit.open("/docs/asyncapi.html")
    page = visit.page
    rendered = page.locator("#asyncapi")
    for section in ("Servers", "Operations", "Messages", "Schemas"):
        await expect(rendered.get_by_role("heading", name=section, exact=True)).to_be_visible()
    for text in (
        "PolyglotMicro events 1.0.0",
        "ProductSold",
        "polyglot.events",
        "inventory.product_sold",
        "analytics.product_sold",
        "notify.product_sold",
    ):
        await expect(rendered).to_contain_text(text)
    visit.assert_clean()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/docs/openapi.json", "application/json"),
        (f"/docs/{POSTMAN_COLLECTION}", "application/json"),
        ("/docs/asyncapi.yaml", "application/yaml"),
        ("/docs/vendor/swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    ],
)
async def test_downloads_are_served_with_their_content_type(
    http: httpx.AsyncClient, path: str, content_type: str
):
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)


async def test_documented_error_body_is_the_one_envoy_sends(http: httpx.AsyncClient):
    spec = (await http.get("/docs/openapi.json")).json()
    documented = spec["components"]["responses"]["NotFound"]["content"]["application/json"]
    not_found = await http.get("/inventory/999999")
    assert not_found.status_code == 404
    body = not_found.json()
    assert set(body) == set(spec["components"]["schemas"]["Status"]["required"])
    assert body["code"] == documented["examples"]["NOT_FOUND"]["value"]["code"]
