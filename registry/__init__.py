"""Model registry on top of MLflow: versions, semantic versions, stages carried by aliases,
the promotion gate, rollback, the audit trail, webhooks and Supabase sync."""
