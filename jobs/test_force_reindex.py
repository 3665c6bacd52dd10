"""The seed's client: ``python -m jobs.test_force_reindex <session_id> [--url URL]``.

Calls the route and prints the outcome the way the seed's "Через тестовый скрипт" did.
Sends ``FACEPASS_API_KEY`` (the first key) as a Bearer token when it is set.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from facepass.settings import Settings


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("session_id")
    parser.add_argument("--url", default=f"http://{settings.http_host}:{settings.http_port}")
    parser.add_argument("--mode", default="missing", choices=["missing", "retry_failed", "full"])
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)

    endpoint = f"{args.url.rstrip('/')}/api/v1/faces/force-reindex-session/{args.session_id}"
    print(f"🔄 Запуск принудительной переиндексации сессии {args.session_id}")
    print(f"POST {endpoint}")
    try:
        response = httpx.post(
            endpoint, params={"mode": args.mode}, headers=settings.api_headers(), timeout=args.timeout
        )
    except httpx.HTTPError as exc:
        print(f"❌ Сервис недоступен: {exc}")
        return 2
    try:
        body = response.json()
    except ValueError:
        print(f"❌ HTTP {response.status_code}: {response.text[:500]}")
        return 1
    if response.status_code != 200:
        print(f"❌ HTTP {response.status_code}: {body.get('detail', body)}")
        return 1
    print(f"✅ {body['message']}")
    print(f"   Сессия: {body['session_name']} ({body['session_id']})")
    print(f"   Всего фото: {body['total_photos']}")
    print(f"   Пропущено (уже в индексе): {body['skipped_photos']}")
    print(f"   Обработано: {body['processed_photos']}")
    print(f"   Успешно: {body['successful_photos']}")
    print(f"   С ошибками: {body['failed_photos']}")
    print(f"   Эмбеддингов в индексе: {body['final_embedding_count']}")
    print(f"   Время обработки: {body['processing_time_ms']:.0f}ms")
    for error in body["errors"]:
        print(f"   ⚠️  {error}")
    print(json.dumps(body, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
