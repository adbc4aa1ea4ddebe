//! Workflows and the structured outputs they name: a workflow's name is unique in its
//! project, its `structured_output_id` must exist, and a structured output in use by a
//! workflow cannot be deleted.

use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{Catalog, CatalogError, Resource, found, insert, listed, remove};
use crate::job::ProjectId;
use crate::store::catalog::Kind;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Workflow {
    pub project: ProjectId,
    pub name: String,
    pub event_name: Option<String>,
    pub provider: String,
    pub model: String,
    pub structured_output_id: Option<String>,
    pub fallbacks: Vec<(String, String)>,
    pub system_prompt: Option<String>,
    /// `mode: "testing"`.
    pub testing: bool,
    pub response_delay_ms: u64,
    pub callback_timeout_ms: Option<u64>,
    pub cache_fields: Vec<String>,
    pub description: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StructuredOutput {
    pub id: String,
    pub project: ProjectId,
    pub name: String,
    /// The JSON Schema, as JSON text.
    pub schema: String,
    /// Sample data, as JSON text.
    pub sample_data: Option<String>,
    pub description: Option<String>,
    pub created_ms: u64,
}

impl Catalog {
    pub fn workflow(&self, project: &ProjectId, name: &str) -> Option<Arc<Workflow>> {
        found(&self.read().workflows, project, name)
    }

    /// [`Catalog::workflow`], and on a miss on a cluster node the workflow another node
    /// created a moment ago, before this node's copy of the catalog heard of it (read from
    /// the bucket's leader): a request may name a workflow made through any node.
    pub async fn workflow_current(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<Option<Arc<Workflow>>, crate::store::StoreError> {
        if let Some(found) = self.workflow(project, name) {
            return Ok(Some(found));
        }
        let kind = Kind::Workflow;
        if self
            .store
            .catalog_catch_up(kind, project, name.as_bytes())
            .await?
        {
            self.reload()?;
        }
        Ok(self.workflow(project, name))
    }

    pub fn workflows(&self, project: &ProjectId) -> Vec<Arc<Workflow>> {
        listed(&self.read().workflows, project)
    }

    /// Creates (`replace == false`, refused if the name exists) or replaces
    /// (`replace == true`, not found if it does not) a workflow; a replacement keeps the
    /// original creation time.
    pub async fn put_workflow(
        &self,
        mut workflow: Workflow,
        replace: bool,
    ) -> Result<Arc<Workflow>, CatalogError> {
        self.commit(|store, cache| {
            let project = workflow.project;
            if let Some(id) = &workflow.structured_output_id
                && found(&cache.outputs, &project, id).is_none()
            {
                return Err(CatalogError::NoSuchOutput(id.clone()));
            }
            match (found(&cache.workflows, &project, &workflow.name), replace) {
                (Some(_), false) => {
                    return Err(CatalogError::exists(Resource::Workflow, &workflow.name));
                }
                (None, true) => {
                    return Err(CatalogError::not_found(Resource::Workflow, &workflow.name));
                }
                (Some(old), true) => workflow.created_ms = old.created_ms,
                (None, false) => {}
            }
            let name = workflow.name.clone();
            store.catalog_put(Kind::Workflow, &project, name.as_bytes(), &workflow)?;
            let workflow = Arc::new(workflow.clone());
            insert(&mut cache.workflows, project, &name, workflow.clone());
            Ok(workflow)
        })
        .await
    }

    pub async fn delete_workflow(
        &self,
        project: &ProjectId,
        name: &str,
    ) -> Result<(), CatalogError> {
        self.commit(|store, cache| {
            let kind = (Kind::Workflow, Resource::Workflow);
            remove(store, &mut cache.workflows, kind, project, name)
        })
        .await
    }

    pub fn structured_output(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Option<Arc<StructuredOutput>> {
        found(&self.read().outputs, project, id)
    }

    pub fn structured_outputs(&self, project: &ProjectId) -> Vec<Arc<StructuredOutput>> {
        listed(&self.read().outputs, project)
    }

    /// Stores a new structured output; names are unique in a project.
    pub async fn create_structured_output(
        &self,
        output: StructuredOutput,
    ) -> Result<Arc<StructuredOutput>, CatalogError> {
        self.commit(|store, cache| {
            let project = output.project;
            if listed(&cache.outputs, &project)
                .iter()
                .any(|o| o.name == output.name)
            {
                return Err(CatalogError::exists(
                    Resource::StructuredOutput,
                    &output.name,
                ));
            }
            let id = output.id.clone();
            store.catalog_put(Kind::StructuredOutput, &project, id.as_bytes(), &output)?;
            let output = Arc::new(output.clone());
            insert(&mut cache.outputs, project, &id, output.clone());
            Ok(output)
        })
        .await
    }

    /// Deletes a structured output unless a workflow still uses it.
    pub async fn delete_structured_output(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<(), CatalogError> {
        self.commit(|store, cache| {
            if found(&cache.outputs, project, id).is_none() {
                return Err(CatalogError::not_found(Resource::StructuredOutput, id));
            }
            if let Some(user) = listed(&cache.workflows, project)
                .iter()
                .find(|w| w.structured_output_id.as_deref() == Some(id))
            {
                return Err(CatalogError::InUse {
                    workflow: user.name.clone(),
                    output: id.to_string(),
                });
            }
            let kind = (Kind::StructuredOutput, Resource::StructuredOutput);
            remove(store, &mut cache.outputs, kind, project, id)
        })
        .await
    }
}
