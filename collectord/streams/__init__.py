"""Live streams of samples to SSE and WebSocket clients, local and across hosts."""
