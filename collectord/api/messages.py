"""Every message the HTTP API can answer with, in English and Polish, in one catalogue."""

from __future__ import annotations

MESSAGES: dict[str, tuple[str, str]] = {
    "not_found": ("Not found: {path}", "Nie znaleziono: {path}"),
    "method_not_allowed": (
        "Method {method} is not allowed here",
        "Metoda {method} jest tu niedozwolona",
    ),
    "body_too_large": (
        "Request body is larger than {max} bytes",
        "Treść żądania przekracza {max} bajtów",
    ),
    "invalid_body": (
        "The request body cannot be read ({reason})",
        "Nie można odczytać treści żądania ({reason})",
    ),
    "missing_metric": (
        "At least one metric name is required (metric=...)",
        "Wymagana jest co najmniej jedna nazwa metryki (metric=...)",
    ),
    "too_many_metrics": (
        "At most {max} metric names are allowed, got {got}",
        "Dozwolonych jest najwyżej {max} nazw metryk, podano {got}",
    ),
    "invalid_metric_name": (
        "Invalid metric name: {name}",
        "Nieprawidłowa nazwa metryki: {name}",
    ),
    "invalid_time": (
        "Invalid time in {param}: {value} (use RFC 3339, epoch milliseconds, now or a relative time such as -1h)",
        "Nieprawidłowy czas w {param}: {value} (użyj RFC 3339, milisekund od epoki, now lub czasu względnego, np. -1h)",
    ),
    "invalid_range": (
        "start must be earlier than end",
        "Początek zakresu musi być wcześniejszy niż jego koniec",
    ),
    "range_too_long": (
        "The range holds {periods} periods at {granularity}; at most {max} are allowed",
        "Zakres obejmuje {periods} okresów przy ziarnistości {granularity}; dozwolonych jest najwyżej {max}",
    ),
    "invalid_granularity": (
        "granularity must be one of 1m, 5m, 1h, 1d, got {value}",
        "Ziarnistość musi być jedną z: 1m, 5m, 1h, 1d; podano {value}",
    ),
    "invalid_aggregation": (
        "aggregation must be one of AVG, SUM, MIN, MAX, COUNT, P50, P90, P95, P99, got {value}",
        "Agregacja musi być jedną z: AVG, SUM, MIN, MAX, COUNT, P50, P90, P95, P99; podano {value}",
    ),
    "invalid_tag_filter": (
        "A tag filter must look like key:value, got {value}",
        "Filtr tagu musi mieć postać klucz:wartość, podano {value}",
    ),
    "too_many_tags": (
        "At most {max} tags are allowed, got {got}",
        "Dozwolonych jest najwyżej {max} tagów, podano {got}",
    ),
    "too_many_group_by": (
        "At most {max} group_by keys are allowed, got {got}",
        "Dozwolonych jest najwyżej {max} kluczy group_by, podano {got}",
    ),
    "invalid_limit": (
        "limit must be an integer from {min} to {max}, got {value}",
        "limit musi być liczbą całkowitą od {min} do {max}; podano {value}",
    ),
    "invalid_format": (
        "format must be json or csv, got {value}",
        "Format musi być json albo csv; podano {value}",
    ),
    "invalid_locale": (
        "locale must be pl or en, got {value}",
        "Ustawienia regionalne muszą być pl albo en; podano {value}",
    ),
    "unauthorized": (
        "A valid bearer token is required",
        "Wymagany jest prawidłowy token (Authorization: Bearer)",
    ),
    "forbidden": (
        "This token's role ({role}) may not do this; it needs {needed}",
        "Rola tego tokenu ({role}) nie pozwala na tę operację; wymagana: {needed}",
    ),
    "invalid_metric": (
        "Invalid metric: {reason}",
        "Nieprawidłowa metryka: {reason}",
    ),
    "invalid_batch": (
        'Invalid batch (expected {{"metrics": [1..500 metrics]}}): {reason}',
        'Nieprawidłowa paczka (oczekiwano {{"metrics": [1..500 metryk]}}): {reason}',
    ),
    # Why one metric (a record, or a batch item) was refused; each names its field first.
    "field_name": (
        "name: Invalid metric name (1..255 characters: a letter, then letters, digits, '.', '_' or '-')",
        "name: Nieprawidłowa nazwa metryki (1..255 znaków: litera, a po niej litery, cyfry, '.', '_' lub '-')",
    ),
    "field_value": (
        "value: must be a finite number",
        "value: wartość musi być skończoną liczbą",
    ),
    "field_type": (
        "type: must be one of COUNTER, GAUGE, HISTOGRAM, SUMMARY",
        "type: typ musi być jednym z: COUNTER, GAUGE, HISTOGRAM, SUMMARY",
    ),
    "field_tags": (
        "tags: at most 20 tags; keys of 1..50 characters, values strings of at most 100",
        "tags: najwyżej 20 tagów; klucze o długości 1..50 znaków, wartości to napisy o długości najwyżej 100",
    ),
    "field_timestamp": (
        "timestamp: must be RFC 3339 with a time zone (2026-11-27T18:00:00Z) or epoch milliseconds",
        "timestamp: znacznik czasu musi być w formacie RFC 3339 ze strefą czasową (2026-11-27T18:00:00Z) "
        "albo w milisekundach od epoki",
    ),
    "timestamp_outside_window": (
        "timestamp: outside the accepted window (at most {late:g} s in the past, {future:g} s ahead)",
        "timestamp: poza dopuszczalnym oknem (najwyżej {late:g} s wstecz i {future:g} s naprzód)",
    ),
    "field_unit": (
        "unit: at most 50 characters",
        "unit: jednostka może mieć najwyżej 50 znaków",
    ),
    "field_aggregationType": (
        "aggregationType: must be one of AVG, SUM, MIN, MAX, COUNT, P50, P90, P95, P99",
        "aggregationType: typ agregacji musi być jednym z: AVG, SUM, MIN, MAX, COUNT, P50, P90, P95, P99",
    ),
    "field_id": (
        "id: must be a UUID",
        "id: identyfikator musi być identyfikatorem UUID",
    ),
    "field_missing": (
        "{field}: required field is missing",
        "{field}: brak wymaganego pola",
    ),
    "field_unknown": (
        "{field}: unknown field",
        "{field}: nieznane pole",
    ),
    "metric_not_object": (
        "a metric must be a JSON object",
        "metryka musi być obiektem JSON",
    ),
    "body_not_json": (
        "the body is not valid JSON",
        "treść żądania nie jest poprawnym dokumentem JSON",
    ),
    # Why a body is not a batch at all.
    "batch_shape": (
        'the body must be an object with one key, "metrics", holding an array',
        'treść musi być obiektem z jednym kluczem "metrics" zawierającym tablicę',
    ),
    "batch_size": (
        "metrics must hold 1 to {max} items",
        "metrics musi zawierać od 1 do {max} elementów",
    ),
    "invalid_precision": (
        "precision must be one of ns, us, ms, s (v1: n, u, ms, s), got {value}",
        "Precyzja musi być jedną z: ns, us, ms, s (v1: n, u, ms, s); podano {value}",
    ),
    "invalid_line": (
        "Line {number} was rejected ({reason}); the other lines were kept",
        "Linia {number} została odrzucona ({reason}); pozostałe linie zapisano",
    ),
    "rate_limited": (
        "This token may write {rate:g} times a second; try again in {seconds} s",
        "Ten token może zapisywać {rate:g} razy na sekundę; spróbuj ponownie za {seconds} s",
    ),
    "storage_unavailable": (
        "The daemon cannot store writes right now (its data directory is full or unwritable); nothing was kept",
        "Demon nie może teraz zapisywać danych (katalog danych jest pełny lub niezapisywalny); nic nie zapisano",
    ),
    "too_many_streams": (
        "This tenant already has {max} streams open; close one or raise streams.max_per_tenant",
        "Ten najemca ma już otwartych {max} strumieni; zamknij któryś lub zwiększ streams.max_per_tenant",
    ),
    "websocket_required": (
        "This endpoint speaks WebSocket only (send Upgrade: websocket)",
        "Ten punkt końcowy obsługuje wyłącznie WebSocket (wyślij Upgrade: websocket)",
    ),
    "invalid_subscription": (
        'Invalid subscription (expected {{"subscribe": {{"metricNames": [1..5 names], "tags": {{}}}}}}): {reason}',
        'Nieprawidłowa subskrypcja (oczekiwano {{"subscribe": {{"metricNames": [1..5 nazw], "tags": {{}}}}}}): '
        "{reason}",
    ),
    "subscribe_timeout": (
        "No subscription arrived within {seconds} seconds of connecting",
        "Subskrypcja nie nadeszła w ciągu {seconds} sekund od połączenia",
    ),
    "missing_older_than": (
        "older_than is required (RFC 3339, epoch milliseconds or a relative time such as -30d)",
        "Parametr older_than jest wymagany (RFC 3339, milisekundy od epoki lub czas względny, np. -30d)",
    ),
    "postgres_unavailable": (
        "PostgreSQL is unavailable; nothing was deleted, try again later",
        "PostgreSQL jest niedostępny; nic nie usunięto, spróbuj ponownie później",
    ),
    "internal": (
        "Internal error; the daemon keeps running (see its log)",
        "Błąd wewnętrzny; demon działa dalej (szczegóły w jego logu)",
    ),
}

LANGUAGES = ("en", "pl")


def message(code: str, language: str, params: dict[str, object]) -> str:
    english, polish = MESSAGES.get(code, MESSAGES["internal"])
    template = polish if language == "pl" else english
    try:
        return template.format(**params)
    except (KeyError, IndexError):
        return template


def language_of(accept_language: str | None) -> str:
    """The preferred of our languages in an Accept-Language header (English by default)."""
    if not accept_language:
        return "en"
    best, best_q = "en", -1.0
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality - position * 1e-6 > best_q:
            best, best_q = primary, quality - position * 1e-6
    return best
