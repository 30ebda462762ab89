//! Parquet files as text sources (the format of most Hugging Face datasets): one document per
//! row, from the string column `data.text_column`. The file is read one row group at a time
//! through the record API, projected onto that column, so other columns are never decoded.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use crate::error::DataError;
use crate::text_event::TextEvent;

/// The string column of one parquet file, read one row group at a time.
pub struct ParquetTextColumn {
    path: std::path::PathBuf,
    column: String,
    reader: SerializedFileReader<File>,
    projection: Type,
}

impl ParquetTextColumn {
    /// Opens `path` and checks that it has a column named `column`.
    pub fn open(path: &Path, column: &str) -> Result<ParquetTextColumn, DataError> {
        let bad = |problem: String| DataError::BadParquet {
            path: path.to_path_buf(),
            problem,
        };
        let file = File::open(path).map_err(|e| DataError::io(path, "open", e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| bad(e.to_string()))?;
        let schema = reader.metadata().file_metadata().schema();
        let fields = schema.get_fields();
        let Some(field) = fields.iter().find(|f| f.name() == column) else {
            let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
            return Err(bad(format!(
                "no column {column:?} (columns: {}); set data.text_column to the one holding the text",
                names.join(", ")
            )));
        };
        let projection = Type::group_type_builder(schema.name())
            .with_fields(vec![field.clone()])
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(ParquetTextColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            reader,
            projection,
        })
    }

    /// Row groups in the file.
    pub fn row_groups(&self) -> usize {
        self.reader.num_row_groups()
    }

    /// Appends the non-null values of row group `group` to `docs`.
    pub fn read_group(&self, group: usize, docs: &mut Vec<String>) -> Result<(), DataError> {
        let column = &self.column;
        let bad = |problem: String| DataError::BadParquet {
            path: self.path.clone(),
            problem: format!("row group {group}: {problem}"),
        };
        let row_group = self
            .reader
            .get_row_group(group)
            .map_err(|e| bad(e.to_string()))?;
        let rows = row_group
            .get_row_iter(Some(self.projection.clone()))
            .map_err(|e| bad(e.to_string()))?;
        for row in rows {
            let row = row.map_err(|e| bad(e.to_string()))?;
            match row.get_column_iter().next().map(|(_, v)| v) {
                Some(Field::Str(s)) => docs.push(s.clone()),
                Some(Field::Bytes(b)) => match std::str::from_utf8(b.data()) {
                    Ok(s) => docs.push(s.to_string()),
                    Err(_) => {
                        return Err(bad(format!(
                            "a value of column {column:?} is not UTF-8 text"
                        )))
                    }
                },
                Some(Field::Null) | None => {}
                Some(other) => {
                    return Err(bad(format!(
                        "column {column:?} holds {other}, not text; set data.text_column to a string column"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Appends the non-null values of `column` in `path`, row group by row group, to `docs`;
/// returns how many it appended.
pub fn read_parquet_column(
    path: &Path,
    column: &str,
    docs: &mut Vec<String>,
) -> Result<usize, DataError> {
    let file = ParquetTextColumn::open(path, column)?;
    let before = docs.len();
    for group in 0..file.row_groups() {
        file.read_group(group, docs)?;
    }
    Ok(docs.len() - before)
}

/// Writes `columns` (name, values; `None` is a null) as a parquet file of string columns, one
/// row group per `rows_per_group` rows: for tests and for users who want a small example.
pub fn write_string_columns(
    path: &Path,
    columns: &[(&str, Vec<Option<&str>>)],
    rows_per_group: usize,
) -> Result<(), DataError> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let bad = |e: parquet::errors::ParquetError| DataError::BadParquet {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    let fields: Vec<String> = columns
        .iter()
        .map(|(name, _)| format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"))
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message text {{ {} }}", fields.join(" "))).map_err(bad)?,
    );
    let file = File::create(path).map_err(|e| DataError::io(path, "create", e))?;
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .map_err(bad)?;
    let rows = columns.first().map_or(0, |(_, v)| v.len());
    for start in (0..rows).step_by(rows_per_group.max(1)) {
        let end = (start + rows_per_group.max(1)).min(rows);
        let mut group = writer.next_row_group().map_err(bad)?;
        for (_, values) in columns {
            let mut column = group
                .next_column()
                .map_err(bad)?
                .expect("a column per field");
            let part = &values[start..end];
            let present: Vec<ByteArray> =
                part.iter().flatten().map(|s| ByteArray::from(*s)).collect();
            let levels: Vec<i16> = part.iter().map(|v| i16::from(v.is_some())).collect();
            column
                .typed::<ByteArrayType>()
                .write_batch(&present, Some(&levels), None)
                .map_err(bad)?;
            column.close().map_err(bad)?;
        }
        group.close().map_err(bad)?;
    }
    writer.close().map_err(bad)?;
    Ok(())
}

/// A parquet file's documents, one row group at a time (what [`crate::text_reader`] reads).
pub(crate) struct ParquetDocuments {
    file: ParquetTextColumn,
    next_group: usize,
    documents: usize,
}

impl ParquetDocuments {
    pub fn open(path: &Path, column: &str) -> Result<ParquetDocuments, DataError> {
        Ok(ParquetDocuments {
            file: ParquetTextColumn::open(path, column)?,
            next_group: 0,
            documents: 0,
        })
    }

    /// Reads the next row group's documents into `queue`; true once the file is done.
    pub fn read_into(&mut self, queue: &mut VecDeque<TextEvent>) -> Result<bool, DataError> {
        if self.next_group == self.file.row_groups() {
            if self.documents == 0 {
                return Err(DataError::EmptyFile {
                    path: self.file.path.clone(),
                });
            }
            return Ok(true);
        }
        let mut docs = Vec::new();
        self.file.read_group(self.next_group, &mut docs)?;
        self.next_group += 1;
        self.documents += docs.len();
        for d in docs {
            if !d.is_empty() {
                queue.push_back(TextEvent::Text(d));
            }
            queue.push_back(TextEvent::EndOfDocument);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_the_text_column_in_every_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let text = vec![Some("one"), None, Some("three"), Some("four"), Some("five")];
        let ids = vec![Some("a"), Some("b"), Some("c"), Some("d"), Some("e")];
        write_string_columns(&path, &[("id", ids), ("text", text)], 2).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.num_row_groups(), 3);

        let mut docs = vec![];
        assert_eq!(read_parquet_column(&path, "text", &mut docs).unwrap(), 4);
        assert_eq!(docs, ["one", "three", "four", "five"]);
        let e = read_parquet_column(&path, "content", &mut docs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no column \"content\" (columns: id, text)")
                && e.contains("data.text_column"),
            "{e}"
        );
        std::fs::write(dir.path().join("x.parquet"), b"not parquet").unwrap();
        let e = read_parquet_column(&dir.path().join("x.parquet"), "text", &mut docs).unwrap_err();
        assert!(matches!(e, DataError::BadParquet { .. }), "{e}");
    }
}
