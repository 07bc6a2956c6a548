"""The usage portal's page: HTML, CSS and JavaScript shipped in `static/`, served by `routes`."""
