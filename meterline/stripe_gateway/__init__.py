"""The only package that calls Stripe. One module per concern: the client, meter events (the
usage sync), the catalog objects (`setup-stripe`), invoices."""
